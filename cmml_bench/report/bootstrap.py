"""Paired bootstrap of the AP difference between two methods on the same test samples.

Each replicate resamples the test samples of every task with replacement,
recomputes every task's score (accuracy, or macro F1 for multi-label runs)
and the AP for both methods on that same resample, and stores the difference.
With several shared seeds the seeds are pooled: every seed's runs use the
same resample, and the replicate's difference is the mean over seeds of
(method AP - baseline AP). The interval therefore reflects test-sample
variation of the seed-averaged difference, not seed-to-seed training variation,
which the paired tests over seeds cover.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmml_bench.metrics import f1_from_counts

CLASS_ORDER_FILE = "class_order.json"
PREDICTION_COLUMNS = ("setting", "task", "sample_id", "missing_type", "label", "prediction")
CHUNK_SIZE = 200
# Points by which the AP recomputed from predictions.csv may differ from the
# final row of the stored matrix before the comparison warns.
AP_AGREEMENT_TOLERANCE = 0.05


class PredictionsError(ValueError):
    """predictions.csv is missing, malformed, or does not pair with another run's."""


@dataclass
class TaskOutcomes:
    """Per-sample outcomes of one run on one task, rows in sorted sample-id order.

    Single-label: `correct` is a (samples,) 0/1 vector. Multi-label: `tp`, `fp`
    and `fn` are (samples x labels) 0/1 matrices over a label list shared by
    all runs being compared.
    """

    sample_ids: np.ndarray
    correct: np.ndarray | None = None
    tp: np.ndarray | None = None
    fp: np.ndarray | None = None
    fn: np.ndarray | None = None


@dataclass
class BootstrapResult:
    """A percentile interval of the (method - baseline) AP difference."""

    observed: float | None
    low: float | None
    high: float | None
    p_value: float | None
    samples: int
    seeds: list[int]
    confidence: float = 0.95
    note: str | None = None


def read_predictions(path: Path, setting: str) -> pd.DataFrame:
    """Read one setting's rows of predictions.csv, with every column as text."""
    if not path.is_file():
        raise PredictionsError(f"{path} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PredictionsError(f"{path}: cannot be parsed as CSV ({error})") from None

    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise PredictionsError(f"{path}: missing columns {', '.join(missing)}")

    rows = frame[frame["setting"] == setting].copy()
    if rows.empty:
        raise PredictionsError(f"{path}: no rows for setting {setting!r}")
    try:
        rows["task"] = rows["task"].astype(int)
    except ValueError:
        raise PredictionsError(f"{path}: the task column contains a value that is not an integer") from None
    if rows.duplicated(["task", "sample_id"]).any():
        raise PredictionsError(f"{path}: a (task, sample_id) pair appears twice for {setting!r}")
    return rows


def read_task_classes(run_dir: Path) -> list[list[str]]:
    """Read the class names of each task from the run's class_order.json."""
    path = run_dir / CLASS_ORDER_FILE
    if not path.is_file():
        raise PredictionsError(
            f"{path} not found, but it is needed for each task's classes in task-aware multi-label scores"
        )
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise PredictionsError(f"{path}: cannot read the 'tasks' list ({error})") from None
    return [[str(name) for name in classes] for classes in tasks]


def restrict_to_task_classes(rows: pd.DataFrame, task_classes: list[list[str]]) -> pd.DataFrame:
    """Keep only each task's own classes in the label and prediction cells.

    Task-aware multi-label rows of predictions.csv list every seen label of a
    sample, but the task-aware score counts only the evaluated task's classes.
    """
    restricted = rows.copy()
    for column in ("label", "prediction"):
        restricted[column] = [
            "|".join(sorted(split_labels(cell) & set(task_classes[task]))) if task < len(task_classes) else cell
            for task, cell in zip(restricted["task"], restricted[column])
        ]
    return restricted


def split_labels(cell: str) -> set[str]:
    """Split a multi-label cell ('a|b', or '' for none) into a set of names."""
    return {name for name in cell.split("|") if name}


def task_outcomes(
    frames: list[pd.DataFrame], multi_label: bool
) -> list[list[TaskOutcomes]]:
    """Align several runs' predictions per task and encode their outcomes.

    Returns outcomes[task][run]. Raises PredictionsError when the runs cover
    different tasks or different test samples of a task, since a paired
    resample needs the same samples for every run.
    """
    task_sets = [sorted(frame["task"].unique()) for frame in frames]
    if any(tasks != task_sets[0] for tasks in task_sets):
        raise PredictionsError(f"the runs' predictions cover different tasks: {task_sets}")

    outcomes = []
    for task in task_sets[0]:
        task_frames = [frame[frame["task"] == task].sort_values("sample_id") for frame in frames]
        reference_ids = task_frames[0]["sample_id"].to_numpy()
        for task_frame in task_frames[1:]:
            if not np.array_equal(task_frame["sample_id"].to_numpy(), reference_ids):
                raise PredictionsError(f"the runs' predictions cover different test samples of task {task}")

        if multi_label:
            outcomes.append(_multi_label_outcomes(task_frames, reference_ids))
        else:
            outcomes.append(
                [
                    TaskOutcomes(
                        sample_ids=reference_ids,
                        correct=(frame["label"].to_numpy() == frame["prediction"].to_numpy()).astype(float),
                    )
                    for frame in task_frames
                ]
            )
    return outcomes


def _multi_label_outcomes(task_frames: list[pd.DataFrame], sample_ids: np.ndarray) -> list[TaskOutcomes]:
    """Encode TP/FP/FN per sample and label over the union of labels of all runs.

    A label outside a run's labels and predictions has TP + FP + FN = 0 there
    and is skipped by the macro F1, so the union gives each run the same score
    as its own label list would.
    """
    parsed = []
    universe: set[str] = set()
    for frame in task_frames:
        labels = [split_labels(cell) for cell in frame["label"]]
        predictions = [split_labels(cell) for cell in frame["prediction"]]
        parsed.append((labels, predictions))
        for sets in (labels, predictions):
            for names in sets:
                universe.update(names)

    columns = {name: index for index, name in enumerate(sorted(universe))}
    encoded = []
    for labels, predictions in parsed:
        targets = _indicator(labels, columns)
        predicted = _indicator(predictions, columns)
        encoded.append(
            TaskOutcomes(
                sample_ids=sample_ids,
                tp=(targets & predicted).astype(float),
                fp=(~targets & predicted).astype(float),
                fn=(targets & ~predicted).astype(float),
            )
        )
    return encoded


def _indicator(label_sets: list[set[str]], columns: dict[str, int]) -> np.ndarray:
    matrix = np.zeros((len(label_sets), len(columns)), dtype=bool)
    for row, names in enumerate(label_sets):
        for name in names:
            matrix[row, columns[name]] = True
    return matrix


def stack_outcomes(per_run: list[TaskOutcomes]) -> np.ndarray:
    """Stack the outcome columns of all runs on one task into one (samples x columns) float32 matrix.

    Single-label: one `correct` column per run. Multi-label: per run, the TP,
    FP and FN columns of every label. Counts stay exact in float32 up to 2**24
    draws, far above any test split.
    """
    if per_run[0].correct is not None:
        return np.column_stack([outcome.correct for outcome in per_run]).astype(np.float32)
    blocks = [np.hstack([outcome.tp, outcome.fp, outcome.fn]) for outcome in per_run]
    return np.hstack(blocks).astype(np.float32)


def task_scores(stacked: np.ndarray, runs: int, weights: np.ndarray) -> np.ndarray:
    """Score every run on one task for each row of resampling counts.

    `stacked` comes from `stack_outcomes`, and `weights` is (replicates x
    samples): how often each sample was drawn. Returns (replicates x runs)
    scores in percent: accuracy, or macro F1 for multi-label outcomes.
    """
    totals = (weights.astype(np.float32) @ stacked).astype(np.float64)
    if stacked.shape[1] == runs:
        return totals / weights.sum(axis=1, keepdims=True) * 100.0

    labels = stacked.shape[1] // (3 * runs)
    counts = totals.reshape(weights.shape[0], runs, 3, labels)
    per_label = f1_from_counts(counts[:, :, 0], counts[:, :, 1], counts[:, :, 2])
    present = ~np.isnan(per_label)
    summed = np.where(present, per_label, 0.0).sum(axis=2)
    label_counts = present.sum(axis=2)
    # NOTE: a resample in which no label occurs at all has no macro F1, so it
    # scores 0 here. That needs a task whose samples have no label and no prediction.
    return np.divide(summed, label_counts, out=np.zeros_like(summed), where=label_counts > 0) * 100.0


def observed_ap(outcomes: list[list[TaskOutcomes]], run_index: int) -> float:
    """Return one run's AP on the full test samples (each drawn once)."""
    scores = []
    for per_run in outcomes:
        outcome = per_run[run_index]
        weights = np.ones((1, outcome.sample_ids.size))
        scores.append(task_scores(stack_outcomes([outcome]), 1, weights)[0, 0])
    return float(np.mean(scores))


def resample_counts(rng: np.random.Generator, replicates: int, size: int) -> np.ndarray:
    """Draw `replicates` bootstrap resamples of `size` samples as (replicates x size) counts."""
    indices = rng.integers(0, size, size=(replicates, size))
    offsets = (np.arange(replicates) * size)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=replicates * size)
    return counts.reshape(replicates, size).astype(np.float32)


def paired_bootstrap_ap(
    outcomes: list[list[TaskOutcomes]],
    pairs: list[tuple[int, int]],
    samples: int,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Bootstrap the seed-pooled AP difference.

    `pairs` lists (method run, baseline run) indices into each task's runs,
    one pair per shared seed. Returns the replicate differences and the
    observed difference, both as mean over pairs of (method AP - baseline AP).
    """
    rng = np.random.default_rng(seed)
    num_tasks = len(outcomes)
    num_runs = len(outcomes[0])
    stacks = [stack_outcomes(per_run) for per_run in outcomes]
    method_runs = [method_run for method_run, _ in pairs]
    baseline_runs = [baseline_run for _, baseline_run in pairs]
    differences = np.empty(samples)

    for start in range(0, samples, CHUNK_SIZE):
        replicates = min(CHUNK_SIZE, samples - start)
        ap_sums = np.zeros((replicates, num_runs))
        for per_run, stacked in zip(outcomes, stacks):
            weights = resample_counts(rng, replicates, per_run[0].sample_ids.size)
            ap_sums += task_scores(stacked, num_runs, weights)
        pair_differences = (ap_sums[:, method_runs] - ap_sums[:, baseline_runs]) / num_tasks
        differences[start : start + replicates] = pair_differences.mean(axis=1)

    observed = np.mean(
        [observed_ap(outcomes, method_run) - observed_ap(outcomes, baseline_run) for method_run, baseline_run in pairs]
    )
    return differences, float(observed)


def summarize_bootstrap(
    differences: np.ndarray, observed: float, seeds: list[int], confidence: float = 0.95
) -> BootstrapResult:
    """Turn replicate differences into a percentile interval and a two-sided p-value.

    p = min(1, 2 * min(P(d <= 0), P(d >= 0))), each share estimated as
    (count + 1) / (replicates + 1) so that p is never 0.
    """
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(differences, [tail, 100.0 - tail])
    replicates = differences.size
    below = (np.count_nonzero(differences <= 0) + 1) / (replicates + 1)
    above = (np.count_nonzero(differences >= 0) + 1) / (replicates + 1)
    return BootstrapResult(
        observed=observed,
        low=float(low),
        high=float(high),
        p_value=float(min(1.0, 2.0 * min(below, above))),
        samples=replicates,
        seeds=seeds,
        confidence=confidence,
    )
