"""Write run folders (result.json + predictions.csv) with known matrices for report tests.

The layout follows docs/run-folder.md. Predictions are built so that the
stored final row of each matrix equals the score recomputed from them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cmml_bench import metrics

MISSING_CYCLE = ("complete", "text_missing", "image_missing")
DEFAULT_IDENTITY = {
    "protocol_hash": "p" * 16,
    "class_order_hash": "c" * 16,
    "mask_hash": "m" * 16,
    "backbone": "tiny-vilt",
    "subset": None,
}


def single_label_rows(setting: str, final_row: list[float], samples_per_task: int = 100) -> list[dict]:
    """Rows where the first round(score% of n) samples of each task are correct."""
    rows = []
    for task, score in enumerate(final_row):
        correct = round(score / 100.0 * samples_per_task)
        for index in range(samples_per_task):
            label = f"class{task}_{index % 2}"
            prediction = label if index < correct else f"class{task}_wrong"
            rows.append(
                {
                    "setting": setting,
                    "task": task,
                    "sample_id": f"t{task}-s{index:04d}",
                    "missing_type": MISSING_CYCLE[index % 3],
                    "label": label,
                    "prediction": prediction,
                }
            )
    return rows


def missing_breakdown_from_rows(rows: list[dict], multi_label: bool) -> dict[str, float | None]:
    """Final score per missing type over all tasks, computed like the runner does."""
    breakdown = {}
    for missing_type in MISSING_CYCLE:
        subset = [row for row in rows if row["missing_type"] == missing_type]
        if not subset:
            breakdown[missing_type] = None
            continue
        if multi_label:
            labels = [set(filter(None, row["label"].split("|"))) for row in subset]
            predictions = [set(filter(None, row["prediction"].split("|"))) for row in subset]
            universe = sorted(set().union(*labels, *predictions))
            breakdown[missing_type] = metrics.macro_f1(labels, predictions, universe)
        else:
            breakdown[missing_type] = metrics.accuracy(
                [row["label"] for row in subset], [row["prediction"] for row in subset]
            )
    return breakdown


def square(matrix: list[list[float]], num_tasks: int) -> list[list[float | None]]:
    """Pad a lower-triangular matrix to num_tasks x num_tasks with None, as result.json stores it."""
    rows = []
    for i in range(num_tasks):
        row = list(matrix[i]) if i < len(matrix) else []
        rows.append(row + [None] * (num_tasks - len(row)))
    return rows


def write_run(
    root: Path,
    method: str,
    seed: int,
    matrices: dict[str, list[list[float]]],
    protocol: str = "toy-protocol",
    status: str = "complete",
    identity: dict | None = None,
    prediction_rows: dict[str, list[dict]] | None = None,
    multi_label: bool = False,
    uses_task_id_at_test: bool | None = None,
    num_tasks: int | None = None,
    folder: Path | None = None,
    task_classes: list[list[str]] | None = None,
) -> Path:
    """Write <root>/<protocol>/<method>/seed<k>/ with result.json and predictions.csv.

    `matrices` maps a setting to its lower-triangular matrix of trained rows.
    Single-label predictions are generated from each final row unless
    `prediction_rows` gives them. `task_classes` is written to class_order.json.
    """
    run_dir = folder or root / protocol / method / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    num_tasks = num_tasks or max(len(matrix) for matrix in matrices.values())

    all_rows = []
    breakdowns = {}
    for setting, matrix in matrices.items():
        if prediction_rows is not None:
            rows = prediction_rows[setting]
        else:
            rows = single_label_rows(setting, matrix[-1])
        all_rows += rows
        breakdowns[setting] = missing_breakdown_from_rows(rows, multi_label)

    result = {
        "schema_version": 1,
        "protocol": protocol,
        "method": method,
        "backbone": "tiny-vilt",
        "seed": seed,
        "status": status,
        "tasks_completed": max(len(matrix) for matrix in matrices.values()),
        "num_tasks": num_tasks,
        "multi_label": multi_label,
        "score_name": "macro_f1" if multi_label else "accuracy",
        "eval_settings": list(matrices),
        "matrix": {setting: square(matrix, num_tasks) for setting, matrix in matrices.items()},
        "metrics": {setting: metrics.summarize(matrix) for setting, matrix in matrices.items()},
        "missing_breakdown": breakdowns,
        "uses_task_id_at_test": "task_aware" in matrices if uses_task_id_at_test is None else uses_task_id_at_test,
        "trainable_parameters": {"per_task": [10] * num_tasks, "total": 10 * num_tasks},
        "total_parameters": 1000,
        "timing": {"train_seconds": [1.0] * num_tasks, "eval_seconds": [0.5] * num_tasks, "peak_memory_mb": 100.0},
        "identity": {**DEFAULT_IDENTITY, **(identity or {})},
        "skipped_samples": {},
        "config": {"train": {}, "eval": {}, "method": {}},
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_predictions(run_dir / "predictions.csv", all_rows)
    if task_classes is not None:
        class_order = {"class_order": [name for names in task_classes for name in names], "tasks": task_classes}
        (run_dir / "class_order.json").write_text(json.dumps(class_order), encoding="utf-8")
    return run_dir


def write_predictions(path: Path, rows: list[dict]) -> None:
    columns = ["setting", "task", "sample_id", "missing_type", "label", "prediction"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
