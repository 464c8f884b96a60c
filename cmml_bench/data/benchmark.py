"""Build a protocol's tasks: read the data, order classes, split, subset and mask."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from cmml_bench.data.errors import DataError
from cmml_bench.data.masks import draw_mask, mask_hash
from cmml_bench.data.readers import read_dataset
from cmml_bench.data.readers.food101 import LAYOUT as FOOD101_LAYOUT
from cmml_bench.data.readers.manifest import LAYOUT as MANIFEST_LAYOUT
from cmml_bench.data.readers.mmimdb import LAYOUT as MMIMDB_LAYOUT
from cmml_bench.data.splits import (
    assign_task,
    draw_subset,
    order_classes,
    select_classes,
    stratified_split,
    label_filter_of,
)
from cmml_bench.data.types import MISSING_TYPE_NAMES, SPLITS, MissingType, Sample, TaskSample
from cmml_bench.protocols import Protocol

MISSING_DATA_HINTS = {
    "tuxpaint": "run `cmml-bench data prepare tuxpaint`",
    "clipart": "run `cmml-bench data prepare clipart`",
    "food101": f"place UPMC Food-101 there in its raw layout: {FOOD101_LAYOUT}",
    "mmimdb": f"place MM-IMDb there in its raw layout: {MMIMDB_LAYOUT}",
    "manifest": f"point `root` at {MANIFEST_LAYOUT}",
}


@dataclass
class TaskData:
    """The classes and the masked train and test samples of one task."""

    task: int
    classes: list[str]
    class_indices: list[int]
    train: list[TaskSample]
    test: list[TaskSample]

    def split(self, name: str) -> list[TaskSample]:
        return self.train if name == "train" else self.test


@dataclass
class Benchmark:
    """A protocol made concrete for one seed: class order, tasks and masks."""

    protocol: Protocol
    seed: int
    class_order: list[str]
    tasks: list[TaskData]
    skipped: dict[str, int] = field(default_factory=dict)
    subset: int | None = None

    @property
    def multi_label(self) -> bool:
        return self.protocol.multi_label

    def missing_counts(self) -> list[dict]:
        """Return per task its classes and, per split, the sample count by missing type."""
        rows = []
        for task in self.tasks:
            splits = {}
            for split in SPLITS:
                kinds = Counter(sample.missing for sample in task.split(split))
                splits[split] = {"samples": len(task.split(split))}
                splits[split].update({MISSING_TYPE_NAMES[kind]: kinds[kind] for kind in MissingType})
            rows.append({"task": task.task, "classes": list(task.classes), "splits": splits})
        return rows

    def mask_hash(self) -> str:
        """Return a SHA-256 over the masks of every task and split."""
        parts = [
            [task.task, split, mask_hash({sample.sample.sample_id: sample.missing for sample in task.split(split)})]
            for task in self.tasks
            for split in SPLITS
        ]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()

    def class_order_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.class_order).encode("utf-8")).hexdigest()


def build_benchmark(
    protocol: Protocol,
    seed: int,
    data_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    subset: int | None = None,
) -> Benchmark:
    """Read the protocol's data and build its tasks for one run seed.

    `subset=N` keeps at most N train and N test samples per class (for
    multi-label data: per the label that assigned the sample to its task),
    drawn with the seed, before the masks are drawn.
    """
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of samples per class, got {subset}")
    data_dir = protocol.data_dir(data_root)
    if not data_dir.exists():
        raise DataError(f"data for protocol {protocol.name} not found at {data_dir}; {MISSING_DATA_HINTS[protocol.dataset]}")

    result = read_dataset(
        protocol.dataset,
        data_dir,
        skip_invalid=skip_invalid,
        label_depth=protocol.class_filter.label_depth,
        multi_label=protocol.multi_label,
        keep_label=label_filter_of(protocol),
    )
    skipped = Counter(result.skipped)
    classes = select_classes(protocol, result.samples)
    class_order = order_classes(protocol, classes)
    samples = result.samples
    if protocol.test_fraction is not None:
        samples = stratified_split(protocol, samples, classes)

    placed = _place_samples(protocol, samples, class_order, skipped)
    if subset is not None:
        placed = _apply_subset(placed, subset, seed, protocol.dataset)
    tasks = _mask_tasks(protocol, seed, class_order, placed)
    return Benchmark(protocol=protocol, seed=seed, class_order=class_order, tasks=tasks, skipped=dict(skipped), subset=subset)


# A sample placed in a task before masking: (sample, task, targets).
Placed = tuple[Sample, int, tuple[int, ...]]


def _place_samples(protocol: Protocol, samples: list[Sample], class_order: list[str], skipped: Counter) -> list[Placed]:
    class_index = {label: index for index, label in enumerate(class_order)}
    placed = []
    for sample in samples:
        assignment = assign_task(sample.labels, class_index, protocol.classes_per_task)
        if assignment is None:
            if protocol.multi_label:
                skipped["no_used_label"] += 1
            continue
        task, targets = assignment
        placed.append((sample, task, targets))
    return placed


def _apply_subset(placed: list[Placed], limit: int, seed: int, dataset: str) -> list[Placed]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sample, _, targets in placed:
        groups[(sample.split, str(targets[0]))].append(sample.sample_id)
    kept = draw_subset(groups, limit, seed, dataset)
    return [item for item in placed if item[0].sample_id in kept]


def _mask_tasks(protocol: Protocol, seed: int, class_order: list[str], placed: list[Placed]) -> list[TaskData]:
    by_task_split: dict[tuple[int, str], list[Placed]] = defaultdict(list)
    for item in placed:
        by_task_split[(item[1], item[0].split)].append(item)

    tasks = []
    for task in range(protocol.num_tasks):
        indices = list(range(task * protocol.classes_per_task, (task + 1) * protocol.classes_per_task))
        splits = {}
        for split in SPLITS:
            members = sorted(by_task_split[(task, split)], key=lambda item: item[0].sample_id)
            masks = draw_mask(
                [sample.sample_id for sample, _, _ in members],
                seed=seed, dataset=protocol.dataset, task=task, split=split, mix=protocol.mix(task, split),
            )
            splits[split] = [
                TaskSample(sample=sample, task=task, targets=targets, missing=masks[sample.sample_id])
                for sample, _, targets in members
            ]
        tasks.append(TaskData(task, [class_order[i] for i in indices], indices, splits["train"], splits["test"]))
    return tasks
