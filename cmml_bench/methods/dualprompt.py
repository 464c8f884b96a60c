"""DualPrompt (Wang et al., ECCV 2022) on a multimodal backbone.

- G-prompt: one prompt shared by all tasks, attached to the first layers.
- E-prompts: one prompt per task, each with a key, attached to the middle layers.

Both are prefix tuning: a prompt of length L at a layer contains L key rows and
L value rows in the projected space, prepended to that layer's attention keys
and values. During training the E-prompt of the current task is used for
every sample, and a surrogate loss pulls its key towards the queries. In
task-agnostic prediction each sample takes the E-prompt whose key has the
highest cosine similarity to its query (the pooled output of the frozen
backbone, an extra forward pass). In task-aware prediction the given task id
picks the E-prompt, so that setting consumes the task id. The classifier
reads the pooled [CLS] output.

Layers: the paper attaches the G-prompt to layers 0-1 and the E-prompts to
layers 2-4 of a 12-layer ViT. By default both spans are scaled to the
backbone's depth with ``scaled_layers``: the ends are multiplied by depth/12
and rounded up, with at least one layer each. A 6-layer backbone gets G at [0]
and E at [1, 2], and a 2-layer backbone G at [0] and E at [1].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmml_bench.backbones.base import Backbone, ForwardContext
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.prompting import (
    PromptMethod,
    cosine_similarity_matrix,
    merge_prefixes,
    resolve_layers,
    uniform_parameter,
)

G_SPAN = (0, 2)
E_SPAN = (2, 5)


class DualPrompt(PromptMethod):
    """Shared G-prompt and per-task E-prompts as attention prefixes."""

    key = "dualprompt"
    description = "DualPrompt: shared G-prompt and per-task E-prompts (chosen by key match) as attention prefixes"
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    # The task-aware setting picks the E-prompt with the true task id.
    uses_task_id_at_test = True

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.g_length = int(self.options.get("g_length", 5))
        self.e_length = int(self.options.get("e_length", 20))
        self.surrogate_weight = float(self.options.get("surrogate_weight", 1.0))

        self.g_layers = resolve_layers(self.options.get("g_layers"), G_SPAN, backbone.num_layers)
        self.e_layers = resolve_layers(self.options.get("e_layers"), E_SPAN, backbone.num_layers)
        overlap = set(self.g_layers) & set(self.e_layers)
        if overlap:
            raise ValueError(f"dualprompt: g_layers and e_layers share layers {sorted(overlap)}")

        width = backbone.hidden_size
        # (layers, 2, L, D): index 0 contains the key rows, index 1 the value rows.
        self.g_prompt = uniform_parameter(len(self.g_layers), 2, self.g_length, width)
        self.e_prompts = nn.ParameterList()
        self.e_keys = nn.ParameterList()

    def add_task_modules(self, task: int) -> None:
        width = self.backbone.hidden_size
        while len(self.e_prompts) <= task:
            self.e_prompts.append(uniform_parameter(len(self.e_layers), 2, self.e_length, width))
            self.e_keys.append(uniform_parameter(width))

    def set_trainable(self, task: int) -> None:
        self.g_prompt.requires_grad_(True)
        self.e_prompts[task].requires_grad_(True)
        self.e_keys[task].requires_grad_(True)

    def select_tasks(self, queries: torch.Tensor, seen_tasks: int) -> torch.Tensor:
        """Return each sample's E-prompt index: the best cosine match among the first ``seen_tasks`` keys."""
        keys = torch.stack(list(self.e_keys[:seen_tasks]))
        return cosine_similarity_matrix(queries, keys).argmax(dim=1)

    def prefixes(self, chosen: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Build the G and E prefixes of every layer for the per-sample E-prompt indices ``chosen`` (B,)."""
        batch = chosen.shape[0]
        g_prefixes = {
            layer: (self.g_prompt[index, 0].expand(batch, -1, -1), self.g_prompt[index, 1].expand(batch, -1, -1))
            for index, layer in enumerate(self.g_layers)
        }

        pool = torch.stack(list(self.e_prompts))
        selected = pool[chosen]
        e_prefixes = {layer: (selected[:, index, 0], selected[:, index, 1]) for index, layer in enumerate(self.e_layers)}
        return merge_prefixes(g_prefixes, e_prefixes)

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        info: dict[str, Any] = {"backbone_passes": 1}
        device = batch.missing.device

        if training:
            queries = self.backbone.frozen_features(batch.inputs, batch.missing)
            chosen = torch.full((batch.size,), task, dtype=torch.long, device=device)
            similarity = cosine_similarity_matrix(queries, self.e_keys[task][None])[:, 0]
            info["loss_terms"] = {"surrogate": self.surrogate_weight * (1.0 - similarity).mean()}
            info["backbone_passes"] = 2
        elif task is not None:
            chosen = torch.full((batch.size,), task, dtype=torch.long, device=device)
        else:
            queries = self.backbone.frozen_features(batch.inputs, batch.missing)
            chosen = self.select_tasks(queries, self.current_task + 1)
            info["selected_task"] = chosen
            info["backbone_passes"] = 2

        context = ForwardContext(missing=batch.missing, prefixes=self.prefixes(chosen))
        return self.backbone(batch.inputs, context).pooled, info
