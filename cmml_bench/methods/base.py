"""The method contract: the hooks the runner calls, task after task.

The runner calls, for each task t:

1. ``begin_task(t)``: build task t's modules and set ``requires_grad`` on
   every parameter, so that exactly what trains during task t is trainable.
   It must not read data, because resuming a run replays it for the finished
   tasks before loading their checkpoint.
2. ``training_loss(batch, t)`` once per training step.
3. ``end_task(t, loader)``: data-dependent summaries (for example task keys)
   after the last step. ``loader`` yields task t's training batches in a
   fixed order. Anything it computes must live in buffers or parameters, so
   that it is saved in the checkpoint.
4. ``predict(batch, task)`` for every test split seen so far, with
   ``task=None`` in the task-agnostic setting. The runner passes a task id
   only in the task-aware setting, and only to methods that list it in
   ``settings``.

Class positions follow the protocol's class order, and each task owns a
contiguous block of it, so "the classes seen after task t" are the first
``layout.seen_classes(t)`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import Backbone

TASK_AGNOSTIC = "task_agnostic"
TASK_AWARE = "task_aware"


@dataclass
class Batch:
    """A training or test batch as methods see it. It never carries the task id.

    ``targets`` is (B,) class positions for single-label data, or a (B, C)
    multi-hot float tensor over the whole class order for multi-label data.
    """

    inputs: dict[str, torch.Tensor]
    missing: torch.Tensor
    targets: torch.Tensor
    sample_ids: list[str]

    @property
    def size(self) -> int:
        return int(self.missing.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        inputs = {name: tensor.to(device, non_blocking=True) for name, tensor in self.inputs.items()}
        return Batch(
            inputs=inputs,
            missing=self.missing.to(device),
            targets=self.targets.to(device),
            sample_ids=self.sample_ids,
        )


@dataclass(frozen=True)
class TaskLayout:
    """The protocol as given to a method: tasks, their classes and the label kind."""

    task_classes: tuple[tuple[int, ...], ...]
    multi_label: bool

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def num_classes(self) -> int:
        return sum(len(classes) for classes in self.task_classes)

    def seen_classes(self, task: int) -> int:
        """Return the number of classes in tasks 0..task."""
        return sum(len(classes) for classes in self.task_classes[: task + 1])

    def class_range(self, task: int) -> tuple[int, int]:
        """Return [start, stop) of task ``task``'s block in the class order."""
        start = self.seen_classes(task - 1) if task > 0 else 0
        return start, start + len(self.task_classes[task])


@dataclass
class Prediction:
    """A method's output for one test batch.

    ``logits`` covers the classes seen so far. ``selected_task`` is the task
    each sample was routed to by the method's own task identification (a
    task-key memory, for example), or None for methods without one. The
    runner compares it with the true task to report identification accuracy.
    """

    logits: torch.Tensor
    selected_task: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of every continual method. Subclasses live in ``<key>.py``.

    Class attributes declare what the method supports. ``settings`` lists the
    evaluation settings it can be scored in. ``uses_task_id_at_test`` states
    whether its task-aware predictions consume the task id. With
    ``trains_on_all_seen_tasks`` the runner feeds it the union of every seen
    task's training data (joint training).
    """

    key: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = (TASK_AGNOSTIC,)
    uses_task_id_at_test: ClassVar[bool] = False
    trains_on_all_seen_tasks: ClassVar[bool] = False
    supports_multi_label: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layout = layout
        self.options = dict(options)
        self.current_task = -1

    def begin_task(self, task: int) -> None:
        """Build task ``task``'s modules and mark exactly what trains during it."""
        self.current_task = task

    def training_loss(self, batch: Batch, task: int) -> dict[str, torch.Tensor]:
        """Return the loss of one training step under key ``loss``, plus logged parts."""
        raise NotImplementedError

    def end_task(self, task: int, loader: Iterable[Batch]) -> None:
        """Compute data-dependent summaries and freeze after the last step of ``task``."""

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        """Score the classes seen so far; ``task`` is None in task-agnostic evaluation."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Return the parameters the optimizer updates during the current task."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def diagnostics(self) -> dict[str, Any]:
        """Return method-specific diagnostics for ``diagnostics.json`` (JSON-able)."""
        return {}

    def reset_diagnostics(self) -> None:
        """Clear counters that ``predict`` accumulates, before a final evaluation."""

    def seen_classes(self, task: int | None = None) -> int:
        return self.layout.seen_classes(self.current_task if task is None else task)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Cross-entropy, or binary cross-entropy on the logits' columns for multi-label data.

    ``logits`` covers the first K classes of the class order. Multi-label
    targets are cut to those K columns, so labels of later tasks are not
    treated as negatives.
    """
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets[:, : logits.shape[1]].to(logits.dtype))
    return F.cross_entropy(logits, targets)


def freeze(modules: Iterable[nn.Module | nn.Parameter]) -> None:
    """Set ``requires_grad=False`` on the given modules or parameters."""
    for item in modules:
        parameters = [item] if isinstance(item, nn.Parameter) else item.parameters()
        for parameter in parameters:
            parameter.requires_grad_(False)


def unfreeze(modules: Iterable[nn.Module | nn.Parameter]) -> None:
    """Set ``requires_grad=True`` on the given modules or parameters."""
    for item in modules:
        parameters = [item] if isinstance(item, nn.Parameter) else item.parameters()
        for parameter in parameters:
            parameter.requires_grad_(True)
