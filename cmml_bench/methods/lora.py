"""Naive LoRA: one LoRA per adapted projection, shared by both modalities and all tasks.

The LoRA matrices and one classifier over the seen classes (a head block per
task, every block trainable) are trained task after task with nothing that
protects earlier tasks, so the method shows interference between tasks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmml_bench.backbones.base import Backbone, ForwardContext
from cmml_bench.methods.base import (
    TASK_AGNOSTIC,
    TASK_AWARE,
    Batch,
    Method,
    Prediction,
    TaskLayout,
    classification_loss,
    freeze,
    unfreeze,
)
from cmml_bench.methods.lora_task import OTHER_TASK_LOGIT, TaskHeads
from cmml_bench.methods.lowrank import LoRALinear, install_adapters, parse_layers, parse_projections

OPTIONS = {"rank", "alpha", "dropout", "layers", "projections"}


class Lora(Method):
    """Options: ``rank`` (8), ``alpha`` (16), ``dropout`` (0), ``layers`` ("all"), ``projections`` (query, key, value)."""

    key = "lora"
    description = "naive LoRA: one LoRA per projection shared by modalities and tasks, one classifier"
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = True

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        unknown = set(self.options) - OPTIONS
        if unknown:
            raise ValueError(f"unknown lora option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(OPTIONS))}")

        rank = int(self.options.get("rank", 8))
        alpha = float(self.options.get("alpha", 16))
        dropout = float(self.options.get("dropout", 0.0))
        layers = parse_layers(self.options.get("layers", "all"), backbone.num_layers)
        kinds = parse_projections(self.options.get("projections"))
        adapters = install_adapters(backbone, layers, kinds, lambda base: LoRALinear(base, rank, alpha, dropout))
        self.adapters = nn.ModuleDict({name.replace(".", "_"): module for name, module in adapters.items()})
        self.heads = TaskHeads(backbone.hidden_size, layout)

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        while len(self.heads) <= task:
            self.heads.add_task(len(self.heads))
        freeze([self])
        unfreeze([*self.adapters.values(), self.heads])
        for adapter in self.adapters.values():
            adapter.base.requires_grad_(False)

    def logits(self, batch: Batch) -> torch.Tensor:
        output = self.backbone(batch.inputs, ForwardContext(missing=batch.missing))
        return self.heads.seen_logits(output.pooled, self.current_task)

    def training_loss(self, batch: Batch, task: int) -> dict[str, torch.Tensor]:
        loss = classification_loss(self.logits(batch), batch.targets, self.layout.multi_label)
        return {"loss": loss}

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        logits = self.logits(batch)
        if task is not None:
            # Task-aware: only the given task's classes compete.
            own_block = self.heads.class_task[: logits.shape[1]] == task
            logits = logits.masked_fill(~own_block.unsqueeze(0), OTHER_TASK_LOGIT)
        return Prediction(logits=logits)
