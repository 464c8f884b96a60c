"""DataLoaders that turn task samples into method ``Batch`` objects."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader

from cmml_bench.backbones.base import Backbone
from cmml_bench.data.types import TaskSample
from cmml_bench.methods.base import Batch


class BatchCollator:
    """Collate task samples with ``backbone.prepare`` and attach targets and missing types.

    Single-label targets are class positions. Multi-label targets are a
    multi-hot vector over the whole class order, so they still contain the
    labels of later tasks. ``classification_loss`` cuts them to the seen classes.
    """

    def __init__(self, backbone: Backbone, num_classes: int, multi_label: bool) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.multi_label = multi_label

    def __call__(self, items: Sequence[TaskSample]) -> Batch:
        samples = [item.sample for item in items]
        missing = [item.missing for item in items]
        inputs = self.backbone.prepare(samples, missing)
        return Batch(
            inputs=inputs,
            missing=torch.tensor([int(kind) for kind in missing], dtype=torch.long),
            targets=self._targets(items),
            sample_ids=[sample.sample_id for sample in samples],
        )

    def _targets(self, items: Sequence[TaskSample]) -> torch.Tensor:
        if not self.multi_label:
            return torch.tensor([item.targets[0] for item in items], dtype=torch.long)

        targets = torch.zeros(len(items), self.num_classes, dtype=torch.float32)
        for row, item in enumerate(items):
            targets[row, list(item.targets)] = 1.0
        return targets


def shuffle_generator(seed: int, task: int, epoch: int) -> torch.Generator:
    """Return a generator for the shuffle of one epoch, seeded from (seed, task, epoch)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + task * 1_009 + epoch)
    return generator


def make_loader(
    samples: Sequence[TaskSample],
    collator: BatchCollator,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """Return a loader over ``samples``: shuffled with ``generator``, or in order without one."""
    return DataLoader(
        list(samples),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=False,
    )
