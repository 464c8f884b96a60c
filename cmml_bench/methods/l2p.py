"""L2P (Learning to Prompt, Wang et al., CVPR 2022) on a multimodal backbone.

A pool of prompts with learnable keys is shared by all tasks. Each sample's
query is the pooled output of the frozen backbone (an extra forward pass).
The N prompts whose keys have the highest cosine similarity to the query are
prepended after [CLS] at the input (prompt tuning at layer 0). The classifier
reads the mean of the prompt tokens' final states, as L2P does. A surrogate
loss, weight * mean over samples of the summed (1 - cosine) of the chosen
keys, pulls the chosen keys towards their queries.
"""

from __future__ import annotations

from typing import Any

import torch

from cmml_bench.backbones.base import Backbone, ForwardContext
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.prompting import PromptMethod, PromptPool


class L2P(PromptMethod):
    """Prompt pool with key-query selection at the input."""

    key = "l2p"
    description = "L2P: a shared prompt pool, top-N prompts chosen per sample by key-query cosine similarity"
    # In the task-aware setting the runner only masks the logits to the task's classes.
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.pool_size = int(self.options.get("pool_size", 10))
        self.prompt_length = int(self.options.get("prompt_length", 5))
        self.top_n = int(self.options.get("top_n", 5))
        self.surrogate_weight = float(self.options.get("surrogate_weight", 0.1))
        if not 1 <= self.top_n <= self.pool_size:
            raise ValueError(f"l2p: top_n must be between 1 and pool_size ({self.pool_size}); got {self.top_n}")

        self.pool = PromptPool(self.pool_size, self.prompt_length, backbone.hidden_size)

    def set_trainable(self, task: int) -> None:
        self.pool.requires_grad_(True)

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        queries = self.backbone.frozen_features(batch.inputs, batch.missing)
        prompts, indices, similarity = self.pool.select(queries, self.top_n)

        context = ForwardContext(missing=batch.missing, prompts={0: prompts})
        output = self.backbone(batch.inputs, context)
        features = output.prompt_hidden.mean(dim=1)

        surrogate = (1.0 - similarity).sum(dim=1).mean()
        info = {
            "loss_terms": {"surrogate": self.surrogate_weight * surrogate},
            "chosen_prompts": indices,
            "backbone_passes": 2,
        }
        return features, info
