"""CODA-Prompt (Smith et al., CVPR 2023) on a multimodal backbone.

At every prompt layer, a sample's prompt is a weighted sum of learnable
components. The weight of component k is the cosine similarity between the
query multiplied elementwise by the component's attention vector and the
component's key. The query is the pooled output of the frozen backbone (an
extra forward pass). Each task adds ``components // num_tasks`` components
per layer; earlier ones are frozen and detached. New components, keys and
attention vectors start orthogonal to the older ones (Gram-Schmidt), and an
optional penalty ``ortho_weight * ||X X^T - I||^2`` keeps them so during
training. The prompt of length L is split into L/2 key rows and L/2 value
rows (prefix tuning). The classifier reads the pooled [CLS] output.

Layers: CODA-Prompt uses layers 0-4 of a 12-layer ViT; by default the span
is scaled to the backbone's depth (see ``scaled_layers``).
"""

from __future__ import annotations

from typing import Any

import torch

from cmml_bench.backbones.base import Backbone, ForwardContext
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.prompting import ComponentPool, PromptMethod, resolve_layers, split_prefix

CODA_SPAN = (0, 5)


def components_per_task(total: int, num_tasks: int) -> int:
    """Return the components each task adds: ``total`` split evenly, at least one."""
    return max(1, total // num_tasks)


class CodaPrompt(PromptMethod):
    """Decomposed prompts: attention-weighted sums of components, grown per task."""

    key = "coda_prompt"
    description = "CODA-Prompt: prompts as query-weighted sums of components; each task adds and freezes components"
    # In the task-aware setting the runner only masks the logits to the task's classes.
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.total_components = int(self.options.get("components", 100))
        self.prompt_length = int(self.options.get("prompt_length", 8))
        self.ortho_weight = float(self.options.get("ortho_weight", 0.0))
        if self.prompt_length % 2:
            raise ValueError(f"coda_prompt: prompt_length must be even (key and value halves); got {self.prompt_length}")

        layers = resolve_layers(self.options.get("layers"), CODA_SPAN, backbone.num_layers)
        per_task = components_per_task(self.total_components, layout.num_tasks)
        self.pool = ComponentPool(layers, per_task, self.prompt_length, backbone.hidden_size)

    def add_task_modules(self, task: int) -> None:
        while self.pool.num_blocks <= task:
            self.pool.add_task()

    def set_trainable(self, task: int) -> None:
        self.pool.set_trainable(task)

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        queries = self.backbone.frozen_features(batch.inputs, batch.missing)
        blocks = self.current_task + 1
        trainable = self.current_task if training else None
        prompts, _ = self.pool.compose(queries, blocks, trainable)

        prefixes = {layer: split_prefix(prompt) for layer, prompt in prompts.items()}
        context = ForwardContext(missing=batch.missing, prefixes=prefixes)
        features = self.backbone(batch.inputs, context).pooled

        info: dict[str, Any] = {"backbone_passes": 2}
        if training and self.ortho_weight > 0:
            penalty = self.pool.orthogonality_penalty(blocks, self.current_task)
            info["loss_terms"] = {"orthogonality": self.ortho_weight * penalty}
        return features, info
