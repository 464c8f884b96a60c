"""Evaluation after each task: scores per seen task, per-sample predictions, task identification."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from cmml_bench.data.types import MISSING_TYPE_NAMES
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, Method, TaskLayout
from cmml_bench.metrics import accuracy, macro_f1

# Multi-label predictions: a class is predicted when its sigmoid passes this value.
THRESHOLD = 0.5


@dataclass(frozen=True)
class SampleRecord:
    """One test sample's outcome in one setting.

    ``labels`` and ``predicted`` are class positions. ``labels`` contains
    the labels that the score counts: the seen classes (task-agnostic) or the
    evaluated task's classes (task-aware).
    """

    setting: str
    task: int
    sample_id: str
    missing: int
    labels: tuple[int, ...]
    predicted: tuple[int, ...]
    selected_task: int | None


def score(records: list[SampleRecord], multi_label: bool, universe: Iterable[int]) -> float:
    """Return accuracy or macro F1 (percent) of ``records`` over the label ``universe``."""
    if multi_label:
        return macro_f1([r.labels for r in records], [r.predicted for r in records], list(universe))
    return accuracy([r.labels[0] for r in records], [r.predicted[0] for r in records])


def predict_task_split(
    method: Method,
    batches: Iterable[Batch],
    *,
    setting: str,
    task: int,
    trained_task: int,
    layout: TaskLayout,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> list[SampleRecord]:
    """Predict one task's test split after training tasks 0..``trained_task``.

    In the task-aware setting the method receives the true task id, and the
    logits outside that task's classes are set to -inf (single-label), or the
    thresholded predictions and labels are cut to the task's classes
    (multi-label). The task-agnostic setting never passes a task id.
    """
    seen = layout.seen_classes(trained_task)
    start, stop = layout.class_range(task)
    records: list[SampleRecord] = []
    for batch in batches:
        batch = batch.to(device)
        with torch.no_grad(), autocast():
            prediction = method.predict(batch, task if setting == TASK_AWARE else None)
        logits = prediction.logits.float()[:, :seen]
        if logits.shape[1] != seen:
            raise RuntimeError(
                f"{type(method).__name__}.predict returned {prediction.logits.shape[1]} logits "
                f"after task {trained_task}; expected one per seen class ({seen})"
            )

        labels, predicted = _decide(logits, batch.targets, setting, start, stop, seen, layout.multi_label)
        selected = prediction.selected_task
        for row, sample_id in enumerate(batch.sample_ids):
            records.append(
                SampleRecord(
                    setting=setting,
                    task=task,
                    sample_id=sample_id,
                    missing=int(batch.missing[row]),
                    labels=labels[row],
                    predicted=predicted[row],
                    selected_task=None if selected is None else int(selected[row]),
                )
            )
    return records


def _decide(
    logits: torch.Tensor,
    targets: torch.Tensor,
    setting: str,
    start: int,
    stop: int,
    seen: int,
    multi_label: bool,
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    low, high = (start, stop) if setting == TASK_AWARE else (0, seen)
    if not multi_label:
        masked = torch.full_like(logits, float("-inf"))
        masked[:, low:high] = logits[:, low:high]
        predicted = masked.argmax(dim=1).tolist()
        return [(int(label),) for label in targets.tolist()], [(int(p),) for p in predicted]

    passed = torch.sigmoid(logits) > THRESHOLD
    label_rows = targets[:, low:high].cpu() > 0.5
    predicted_rows = passed[:, low:high].cpu()
    labels = [tuple(low + int(i) for i in row.nonzero().flatten().tolist()) for row in label_rows]
    predicted = [tuple(low + int(i) for i in row.nonzero().flatten().tolist()) for row in predicted_rows]
    return labels, predicted


def task_universe(setting: str, task: int, trained_task: int, layout: TaskLayout) -> range:
    """Return the class positions a score counts: seen classes, or the task's own."""
    if setting == TASK_AWARE:
        return range(*layout.class_range(task))
    return range(layout.seen_classes(trained_task))


def missing_breakdown(
    records: list[SampleRecord], multi_label: bool, seen: int
) -> dict[str, float | None]:
    """Return the score on complete, text-missing and image-missing samples of all tasks.

    Multi-label scores are macro F1 over every seen class, computed on the
    labels each record counts (so task-aware records only hold their task's
    labels).
    """
    breakdown: dict[str, float | None] = {}
    for kind, name in enumerate(MISSING_TYPE_NAMES):
        subset = [record for record in records if record.missing == kind]
        breakdown[name] = _score_or_none(subset, multi_label, range(seen))
    return breakdown


def _score_or_none(records: list[SampleRecord], multi_label: bool, universe: range) -> float | None:
    if not records:
        return None
    try:
        return score(records, multi_label, universe)
    except ValueError:
        # NOTE: macro F1 is undefined when no label of the universe occurs in
        # the labels or the predictions of these records. It is reported as null.
        return None


def task_identification(records: list[SampleRecord]) -> dict | None:
    """Return the accuracy (percent) of the method's task routing, or None without routing.

    Uses the task-agnostic records whose prediction carried ``selected_task``.
    """
    routed = [r for r in records if r.setting == TASK_AGNOSTIC and r.selected_task is not None]
    if not routed:
        return None

    def rate(group: list[SampleRecord]) -> dict:
        correct = sum(r.selected_task == r.task for r in group)
        return {"accuracy": 100.0 * correct / len(group), "samples": len(group)}

    by_task: dict[int, list[SampleRecord]] = defaultdict(list)
    by_missing: dict[str, list[SampleRecord]] = defaultdict(list)
    for record in routed:
        by_task[record.task].append(record)
        by_missing[MISSING_TYPE_NAMES[record.missing]].append(record)
    return {
        "setting": TASK_AGNOSTIC,
        "overall": rate(routed),
        "per_task": {str(task): rate(group) for task, group in sorted(by_task.items())},
        "per_missing_type": {name: rate(by_missing[name]) for name in MISSING_TYPE_NAMES if by_missing[name]},
    }
