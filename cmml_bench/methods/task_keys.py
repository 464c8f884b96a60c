"""A task-key memory: one key per task, matched per sample by cosine similarity.

Which features the keys are built from: the pooled output of the frozen,
unadapted backbone (``Backbone.frozen_features``). It does not depend on any
task's adapters or prompts, so a key computed at the end of task 0 stays a
valid description of task 0 after every later task. A test sample's query is
also computed the same way whatever task it belongs to.

A key is the mean of the L2-normalised features of a task's training
samples. With ``per_missing_type`` a task also keeps one key per missing type
(complete, text missing, image missing), because a sample without its image or
its text has a very different feature from a complete one. A test sample is
then compared with each task's key of its own missing type. When a task had
no training sample of that type, its key over all samples is used instead. Every sample picks its task on its own, never by a vote over the batch.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.data.types import MissingType

# Slot of the key over all samples, after the per-missing-type slots.
ALL_TYPES = len(MissingType)


class TaskKeyMemory(nn.Module):
    """Per-task key sums and counts, kept in buffers so checkpoints save them."""

    def __init__(self, num_tasks: int, dim: int, per_missing_type: bool = True) -> None:
        super().__init__()
        self.per_missing_type = per_missing_type
        self.register_buffer("key_sums", torch.zeros(num_tasks, ALL_TYPES + 1, dim))
        self.register_buffer("key_counts", torch.zeros(num_tasks, ALL_TYPES + 1))

    @property
    def num_tasks(self) -> int:
        return int(self.key_sums.shape[0])

    def reset_task(self, task: int) -> None:
        self.key_sums[task].zero_()
        self.key_counts[task].zero_()

    @torch.no_grad()
    def add(self, task: int, features: torch.Tensor, missing: torch.Tensor) -> None:
        """Add a batch of query features (B, D) with their missing types to task ``task``'s keys."""
        normalised = F.normalize(features.float(), dim=-1).to(self.key_sums.dtype)
        missing = missing.to(self.key_sums.device, torch.long)
        self.key_sums[task].index_add_(0, missing, normalised)
        self.key_counts[task].index_add_(0, missing, torch.ones_like(missing, dtype=self.key_counts.dtype))
        self.key_sums[task, ALL_TYPES] += normalised.sum(dim=0)
        self.key_counts[task, ALL_TYPES] += normalised.shape[0]

    @torch.no_grad()
    def fit(self, task: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Rebuild task ``task``'s keys from (features, missing) batches."""
        self.reset_task(task)
        for features, missing in batches:
            self.add(task, features, missing)

    def known_tasks(self, last_task: int) -> torch.Tensor:
        """Return the indices of tasks 0..last_task that have a key."""
        counts = self.key_counts[: last_task + 1, ALL_TYPES]
        return torch.nonzero(counts > 0).flatten()

    @torch.no_grad()
    def similarities(self, features: torch.Tensor, missing: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Return the (B, len(tasks)) cosine similarity of each feature with each task's key."""
        sums = self.key_sums[tasks]
        counts = self.key_counts[tasks]
        overall = sums[:, ALL_TYPES]

        if self.per_missing_type:
            missing = missing.to(sums.device, torch.long)
            typed = sums[:, missing]
            has_typed = (counts[:, missing] > 0).unsqueeze(-1)
            keys = torch.where(has_typed, typed, overall.unsqueeze(1))
        else:
            keys = overall.unsqueeze(1).expand(-1, features.shape[0], -1)

        # Cosine similarity does not depend on the key's scale, so sums serve as means.
        keys = F.normalize(keys, dim=-1)
        queries = F.normalize(features.to(keys.dtype), dim=-1)
        return torch.einsum("bd,tbd->bt", queries, keys)

    @torch.no_grad()
    def select(self, features: torch.Tensor, missing: torch.Tensor, last_task: int) -> torch.Tensor:
        """Return the (B,) task whose key is most similar to each sample's feature, among tasks 0..last_task."""
        tasks = self.known_tasks(last_task)
        if tasks.numel() == 0:
            raise RuntimeError(
                f"no task key exists for tasks 0..{last_task}; end_task must build a task's key before prediction"
            )
        scores = self.similarities(features, missing, tasks)
        return tasks[scores.argmax(dim=1)]
