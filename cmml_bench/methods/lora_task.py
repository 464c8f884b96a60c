"""Task-specific LoRA: one LoRA and one head per task, earlier tasks frozen.

At test time each sample picks its task with the task-key memory
(``task_keys.py``) and runs with that task's LoRA and head. In the task-aware
setting the runner's task id is used instead. ``TaskPartitionedMethod`` contains
what DeLo shares with it: per-task heads, the key memory, freezing, and the
placement of the selected task's scores in the logits over all seen classes.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import Backbone, EncoderOutput, ForwardContext, ProjectionAdapter
from cmml_bench.methods.base import (
    TASK_AGNOSTIC,
    TASK_AWARE,
    Batch,
    Method,
    Prediction,
    TaskLayout,
    freeze,
    unfreeze,
)
from cmml_bench.methods.lowrank import (
    TASK_EXTRA,
    TaskLoRALinear,
    install_adapters,
    parse_layers,
    parse_projections,
)
from cmml_bench.methods.task_keys import TaskKeyMemory

# Logit given to the classes of tasks a sample was not routed to. It is
# finite, so softmax and cross-entropy stay defined, and low enough that
# softmax gives those classes probability 0 and sigmoid gives 0 in float32.
OTHER_TASK_LOGIT = -1.0e4


class TaskHeads(nn.Module):
    """One linear head per task over that task's classes; their rows concatenated follow the class order."""

    def __init__(self, in_features: int, layout: TaskLayout) -> None:
        super().__init__()
        self.in_features = in_features
        self.layout = layout
        self.heads = nn.ModuleList()
        class_task = [task for task, classes in enumerate(layout.task_classes) for _ in classes]
        self.register_buffer("class_task", torch.tensor(class_task, dtype=torch.long), persistent=False)

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, task: int) -> nn.Linear:
        return self.heads[task]

    def add_task(self, task: int) -> nn.Linear:
        if task != len(self.heads):
            raise ValueError(f"heads must be added in task order: expected task {len(self.heads)}, got {task}")
        device = self.class_task.device
        head = nn.Linear(self.in_features, len(self.layout.task_classes[task])).to(device)
        self.heads.append(head)
        return head

    def seen_logits(self, features: torch.Tensor, last_task: int) -> torch.Tensor:
        """Return every head's scores for tasks 0..last_task, concatenated (B, seen classes)."""
        weight = torch.cat([self.heads[task].weight for task in range(last_task + 1)])
        bias = torch.cat([self.heads[task].bias for task in range(last_task + 1)])
        return F.linear(features, weight, bias)

    def routed_logits(self, features: torch.Tensor, task: torch.Tensor, last_task: int) -> torch.Tensor:
        """Keep each sample's selected-task block of the seen logits and set the rest to ``OTHER_TASK_LOGIT``."""
        logits = self.seen_logits(features, last_task)
        own_block = self.class_task[: logits.shape[1]].unsqueeze(0) == task.unsqueeze(1)
        return logits.masked_fill(~own_block, OTHER_TASK_LOGIT)


def task_targets(targets: torch.Tensor, layout: TaskLayout, task: int) -> torch.Tensor:
    """Return targets relative to task ``task``'s class block (single- or multi-label)."""
    start, stop = layout.class_range(task)
    if layout.multi_label:
        return targets[:, start:stop].float()
    if bool(((targets < start) | (targets >= stop)).any()):
        raise ValueError(f"a training target lies outside task {task}'s classes [{start}, {stop})")
    return targets - start


def head_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


class TaskPartitionedMethod(Method):
    """Per-task adapters and heads, frozen after their task, chosen per sample by task keys.

    Subclasses implement ``make_adapter(base)`` (an adapter with ``tasks``, a
    ModuleList, and ``add_task()``) and ``training_loss``.

    Options: ``layers`` ("all" or a list), ``projections`` (default query, key,
    value), ``key_per_missing_type`` (default true, see ``task_keys.py``).
    """

    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = True

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        layers = parse_layers(self.options.get("layers", "all"), backbone.num_layers)
        kinds = parse_projections(self.options.get("projections"))
        self.adapters = nn.ModuleDict(
            {name.replace(".", "_"): module for name, module in install_adapters(backbone, layers, kinds, self.make_adapter).items()}
        )
        self.heads = TaskHeads(backbone.hidden_size, layout)
        per_type = bool(self.options.get("key_per_missing_type", True))
        self.task_keys = TaskKeyMemory(layout.num_tasks, backbone.hidden_size, per_missing_type=per_type)

    def make_adapter(self, base: nn.Linear) -> ProjectionAdapter:
        raise NotImplementedError

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        while len(self.heads) <= task:
            new_task = len(self.heads)
            for adapter in self.adapters.values():
                adapter.add_task()
            self.heads.add_task(new_task)

        freeze([self])
        unfreeze(self.task_modules(task))

    def task_modules(self, task: int) -> list[nn.Module]:
        """Return the modules that belong to task ``task`` alone."""
        return [adapter.tasks[task] for adapter in self.adapters.values()] + [self.heads[task]]

    def encode(self, batch: Batch, task: int | torch.Tensor, extras: dict[str, Any] | None = None) -> EncoderOutput:
        """Run the backbone with the adapters of ``task`` (an int, or one task per sample)."""
        context = ForwardContext(missing=batch.missing, extras={TASK_EXTRA: task, **(extras or {})})
        return self.backbone(batch.inputs, context)

    def end_task(self, task: int, loader: Iterable[Batch]) -> None:
        device = self.backbone.device
        self.task_keys.reset_task(task)
        for batch in loader:
            batch = batch.to(device)
            self.task_keys.add(task, self.backbone.frozen_features(batch.inputs, batch.missing), batch.missing)
        freeze([self])

    def identify_tasks(self, batch: Batch) -> torch.Tensor:
        """Return the (B,) task each sample selects with the key memory, from the frozen backbone's features."""
        features = self.backbone.frozen_features(batch.inputs, batch.missing)
        return self.task_keys.select(features, batch.missing, self.current_task)

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        if task is None:
            selected = self.identify_tasks(batch)
        else:
            selected = torch.full((batch.size,), int(task), dtype=torch.long, device=batch.missing.device)

        output = self.encode(batch, selected, self.prediction_extras())
        logits = self.heads.routed_logits(output.pooled, selected, self.current_task)
        return Prediction(logits=logits, selected_task=selected if task is None else None)

    def prediction_extras(self) -> dict[str, Any]:
        return {}

    def diagnostics(self) -> dict[str, Any]:
        counts = self.task_keys.key_counts[: self.current_task + 1].long().tolist()
        return {
            "task_key_features": "frozen backbone pooled output",
            "task_key_per_missing_type": self.task_keys.per_missing_type,
            "task_key_training_samples": {
                f"task{task}": dict(zip(("complete", "text_missing", "image_missing", "all"), row))
                for task, row in enumerate(counts)
            },
        }


class LoraTask(TaskPartitionedMethod):
    """One LoRA and one head per task; the task is chosen per sample by task keys.

    Options: ``rank`` (8), ``alpha`` (16), ``dropout`` (0), plus those of
    ``TaskPartitionedMethod``.
    """

    key = "lora_task"
    description = "one LoRA and head per task, chosen per sample by a task-key memory"
    option_names = frozenset({"rank", "alpha", "dropout", "layers", "projections", "key_per_missing_type"})

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        unknown = set(options) - self.option_names
        if unknown:
            allowed = ", ".join(sorted(self.option_names))
            raise ValueError(f"unknown lora_task option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
        super().__init__(backbone, layout, options)

    def make_adapter(self, base: nn.Linear) -> TaskLoRALinear:
        return TaskLoRALinear(
            base,
            rank=int(self.options.get("rank", 8)),
            alpha=float(self.options.get("alpha", 16)),
            dropout=float(self.options.get("dropout", 0.0)),
        )

    def training_loss(self, batch: Batch, task: int) -> dict[str, torch.Tensor]:
        output = self.encode(batch, task)
        logits = self.heads[task](output.pooled)
        loss = head_loss(logits, task_targets(batch.targets, self.layout, task), self.layout.multi_label)
        return {"loss": loss, "classification": loss.detach()}
