"""The content of result.json, predictions.csv and diagnostics.json (schema in docs/run-folder.md)."""

from __future__ import annotations

from typing import Any

from cmml_bench.data.types import MISSING_TYPE_NAMES
from cmml_bench.engine.evaluation import SampleRecord
from cmml_bench.metrics import summarize

SCHEMA_VERSION = 1


def empty_matrix(num_tasks: int) -> list[list[float | None]]:
    return [[None] * num_tasks for _ in range(num_tasks)]


def metrics_of(matrix: list[list[float | None]]) -> dict[str, float | None] | None:
    """Return the metrics of a matrix, or None before the first task is evaluated."""
    if all(value is None for value in matrix[0]):
        return None
    return summarize(matrix)


def build_result(*, identity: dict, progress: dict, static: dict) -> dict[str, Any]:
    """Assemble result.json from the run's fixed facts and its progress so far."""
    settings = static["eval_settings"]
    completed = progress["tasks_completed"]
    return {
        "schema_version": SCHEMA_VERSION,
        "protocol": static["protocol"],
        "method": static["method"],
        "backbone": static["backbone"],
        "seed": static["seed"],
        "status": "complete" if completed == static["num_tasks"] else "incomplete",
        "tasks_completed": completed,
        "num_tasks": static["num_tasks"],
        "multi_label": static["multi_label"],
        "score_name": static["score_name"],
        "eval_settings": list(settings),
        "matrix": {setting: progress["matrix"][setting] for setting in settings},
        "metrics": {setting: metrics_of(progress["matrix"][setting]) for setting in settings},
        "missing_breakdown": progress.get("missing_breakdown", {}),
        "uses_task_id_at_test": static["uses_task_id_at_test"],
        "trainable_parameters": {
            "per_task": progress["trainable_per_task"],
            "total": progress["trainable_total"],
        },
        "total_parameters": progress["total_parameters"],
        "timing": {
            "train_seconds": progress["train_seconds"],
            "eval_seconds": progress["eval_seconds"],
            "peak_memory_mb": progress["peak_memory_mb"],
            "peak_memory_kind": progress["peak_memory_kind"],
        },
        "identity": identity,
        "skipped_samples": static["skipped_samples"],
        "task_identification": static.get("task_identification"),
        "config": static["config"],
    }


def prediction_rows(records: list[SampleRecord], class_order: list[str], label_sets: dict) -> list[list[Any]]:
    """Return predictions.csv rows: setting, task, sample_id, missing_type, label, prediction.

    ``label_sets`` maps (task, sample_id) to the seen labels of the sample, so
    a task-aware multi-label row still lists every seen label.
    """
    rows = []
    for record in records:
        labels = label_sets[(record.task, record.sample_id)]
        rows.append(
            [
                record.setting,
                record.task,
                record.sample_id,
                MISSING_TYPE_NAMES[record.missing],
                "|".join(class_order[index] for index in labels),
                "|".join(class_order[index] for index in record.predicted),
            ]
        )
    return rows
