"""Classifier heads shared by the methods: a linear head that grows with the tasks."""

from __future__ import annotations

import torch
from torch import nn

from cmml_bench.methods.base import TaskLayout


class ExpandableHead(nn.Module):
    """A linear classifier over the classes seen so far, one block of rows per task.

    ``grow(task)`` adds the blocks of tasks up to ``task``; earlier blocks
    keep their rows. The logits follow the class order, because task t's
    block covers ``layout.class_range(t)``.
    """

    def __init__(self, in_features: int, layout: TaskLayout) -> None:
        super().__init__()
        self.in_features = in_features
        self.layout = layout
        self.blocks = nn.ModuleList()

    @property
    def num_tasks(self) -> int:
        return len(self.blocks)

    @property
    def num_classes(self) -> int:
        return sum(block.out_features for block in self.blocks)

    def grow(self, task: int) -> None:
        """Add a block for every task up to ``task`` that has none yet (new weights use the global RNG)."""
        while len(self.blocks) <= task:
            classes = len(self.layout.task_classes[len(self.blocks)])
            self.blocks.append(nn.Linear(self.in_features, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(features) for block in self.blocks], dim=1)

    def block(self, task: int) -> nn.Linear:
        return self.blocks[task]


def task_logits_over_seen(block_logits: torch.Tensor, layout: TaskLayout, task: int, seen: int) -> torch.Tensor:
    """Place one task's logits in its class range of a (B, seen) tensor filled with -inf."""
    start, stop = layout.class_range(task)
    logits = block_logits.new_full((block_logits.shape[0], seen), float("-inf"))
    logits[:, start:stop] = block_logits
    return logits
