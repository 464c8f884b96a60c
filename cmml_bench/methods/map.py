"""MAP, missing-aware prompts (Lee et al., CVPR 2023), trained task after task.

There is one learnable prompt per missing case (complete, text missing,
image missing) and per prompt layer. Each sample takes the prompt of its own
missing type, read from ``batch.missing``: the missing type is known at test
time, and it is not the task id. The prompts are input-level: at each prompt
layer they are inserted after [CLS], replacing the previous layer's prompts
(deep prompt tuning). The prompts and a single classifier over all seen
classes train in every task, with nothing that protects old tasks, so MAP
here is a missing-modality baseline, not a continual method. The
classifier reads the pooled [CLS] output. MAP needs no query, so it runs one
backbone pass per batch.

NOTE: MAP also trains ViLT's pooler; this version keeps the backbone's pooler
frozen so that every backbone is treated alike.

Layers: MAP prompts layers 0-5 of 12-layer ViLT; by default the span is scaled
to the backbone's depth (see ``scaled_layers``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmml_bench.backbones.base import Backbone, ForwardContext
from cmml_bench.data.types import MissingType
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.prompting import PromptMethod, resolve_layers

MAP_SPAN = (0, 6)
MISSING_CASES = len(MissingType)


class MissingAwarePrompts(PromptMethod):
    """One prompt per missing case at each prompt layer; one classifier trained sequentially."""

    key = "map"
    description = "MAP: one input-level prompt per missing case, trained task after task with one classifier"
    # In the task-aware setting the runner only masks the logits to the task's classes.
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False
    mask_old_classes = False

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.prompt_length = int(self.options.get("prompt_length", 16))
        self.layers = resolve_layers(self.options.get("layers"), MAP_SPAN, backbone.num_layers)
        init_std = float(self.options.get("init_std", 0.02))

        shape = (MISSING_CASES, len(self.layers), self.prompt_length, backbone.hidden_size)
        self.prompts = nn.Parameter(torch.randn(shape) * init_std)

    def set_trainable(self, task: int) -> None:
        self.prompts.requires_grad_(True)

    def prompts_for(self, missing: torch.Tensor) -> dict[int, torch.Tensor]:
        """Return {layer: (B, L, D)}: each sample's prompts for its missing type."""
        chosen = self.prompts[missing.long()]
        return {layer: chosen[:, index] for index, layer in enumerate(self.layers)}

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        context = ForwardContext(missing=batch.missing, prompts=self.prompts_for(batch.missing))
        features = self.backbone(batch.inputs, context).pooled
        return features, {"backbone_passes": 1}
