"""RebQ, reconstruct before query (Zhao et al., 2024), as designed in this harness.

- Queries. One frozen forward pass gives each sample a text query (the mean
  final state of its text tokens) and an image query (the mean over its
  image tokens).
- Memory prompts. For each modality, a memory of learnable slots (a key and a
  value prompt each) rebuilds that modality's query from the other one. The
  available query attends to the keys (softmax of cosine / temperature) and
  reads the weighted sum of the value prompts. A text-missing sample gets its
  text query rebuilt from its image query, an image-missing sample the
  reverse, before the pools are queried.
- Decomposed prompt pools. One CODA-style component pool per modality; the
  text pool is queried with the text query and the image pool with the
  image query. At each prompt layer the two prompts are split into key and
  value halves and prepended together as attention prefixes.
- Reconstruction loss. During training, every complete sample of the batch
  is copied twice, once without its text and once without its image. The
  copies go through the same frozen pass as the batch. The memory rebuilds
  the dropped modality's query from the copy's remaining one, and the loss
  is the mean squared error to the complete sample's own query of that
  modality. Only these copies enter the loss. The pools see the rebuilt
  queries detached, so the memory learns from this loss alone.

Two backbone passes per prediction batch: the frozen query pass and the
prompted pass. The classifier reads the pooled [CLS] output.

NOTE: the published RebQ sizes (components per pool, memory slots, loss
weight) were not recovered. The defaults reuse CODA-Prompt's pool sizes, and
the memory settings are this harness's choice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import Backbone, EncoderOutput, ForwardContext, masked_mean
from cmml_bench.data.types import MissingType
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.coda_prompt import CODA_SPAN, components_per_task
from cmml_bench.methods.prompting import (
    ComponentPool,
    PromptMethod,
    cosine_similarity_matrix,
    frozen_pass,
    resolve_layers,
    split_prefix,
    uniform_parameter,
)


class PromptMemory(nn.Module):
    """Slots of (key, value prompt) that rebuild one modality's query from the other's."""

    def __init__(self, slots: int, width: int, temperature: float) -> None:
        super().__init__()
        self.keys = uniform_parameter(slots, width)
        self.values = uniform_parameter(slots, width)
        self.temperature = temperature

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        attention = torch.softmax(cosine_similarity_matrix(queries, self.keys) / self.temperature, dim=1)
        return attention @ self.values


def modality_queries(output: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (text, image) queries: mean final states over each modality's tokens."""
    sequence = output.sequence
    return masked_mean(output.hidden, sequence.text_mask), masked_mean(output.hidden, sequence.image_mask)


def concatenate_inputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([part[name] for part in parts], dim=0) for name in parts[0]}


class RebQ(PromptMethod):
    """Modality-specific decomposed prompt pools queried after memory-based reconstruction."""

    key = "rebq"
    description = "RebQ: text and image component pools, queried after memory prompts rebuild the missing modality"
    # In the task-aware setting the runner only masks the logits to the task's classes.
    settings = (TASK_AGNOSTIC, TASK_AWARE)
    uses_task_id_at_test = False

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.total_components = int(self.options.get("components", 100))
        self.prompt_length = int(self.options.get("prompt_length", 8))
        self.ortho_weight = float(self.options.get("ortho_weight", 0.0))
        self.reconstruction_weight = float(self.options.get("reconstruction_weight", 1.0))
        memory_slots = int(self.options.get("memory_slots", 32))
        temperature = float(self.options.get("memory_temperature", 0.1))
        if self.prompt_length % 2:
            raise ValueError(f"rebq: prompt_length must be even (key and value halves); got {self.prompt_length}")

        width = backbone.hidden_size
        layers = resolve_layers(self.options.get("layers"), CODA_SPAN, backbone.num_layers)
        per_task = components_per_task(self.total_components, layout.num_tasks)
        self.text_pool = ComponentPool(layers, per_task, self.prompt_length, width)
        self.image_pool = ComponentPool(layers, per_task, self.prompt_length, width)
        self.text_memory = PromptMemory(memory_slots, width, temperature)
        self.image_memory = PromptMemory(memory_slots, width, temperature)

    def add_task_modules(self, task: int) -> None:
        while self.text_pool.num_blocks <= task:
            self.text_pool.add_task()
            self.image_pool.add_task()

    def set_trainable(self, task: int) -> None:
        self.text_pool.set_trainable(task)
        self.image_pool.set_trainable(task)
        self.text_memory.requires_grad_(True)
        self.image_memory.requires_grad_(True)

    def rebuilt_queries(
        self, text: torch.Tensor, image: torch.Tensor, missing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the query of each sample's missing modality with its reconstruction."""
        text_missing = (missing == MissingType.TEXT_MISSING)[:, None]
        image_missing = (missing == MissingType.IMAGE_MISSING)[:, None]
        text = torch.where(text_missing, self.text_memory(image), text)
        image = torch.where(image_missing, self.image_memory(text), image)
        return text, image

    def reconstruction_loss(
        self, text: torch.Tensor, image: torch.Tensor, copies: tuple[torch.Tensor, torch.Tensor], complete: torch.Tensor
    ) -> torch.Tensor:
        """Return the mean squared error of the rebuilt queries of the dropped-modality copies.

        ``copies`` contains the (text, image) queries of the text-dropped copies
        followed by the image-dropped copies of the complete samples
        ``complete``. Without copies the loss is zero.
        """
        count = complete.numel()
        if count == 0:
            return text.new_zeros(())

        copy_text, copy_image = copies
        rebuilt_text = self.text_memory(copy_image[:count])
        rebuilt_image = self.image_memory(copy_text[count:])
        errors = torch.cat(
            [
                F.mse_loss(rebuilt_text, text[complete], reduction="none").mean(dim=1),
                F.mse_loss(rebuilt_image, image[complete], reduction="none").mean(dim=1),
            ]
        )
        return errors.mean()

    def query_pass(
        self, batch: Batch, training: bool
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Run the frozen pass on the batch and, when training, on its dropped-modality copies.

        Returns the batch's (text, image) queries, the copies' (text, image)
        queries (empty without copies) and the indices of the complete
        samples that were copied.
        """
        complete = torch.nonzero(batch.missing == MissingType.COMPLETE).flatten()
        if not training:
            complete = complete[:0]

        inputs, missing = batch.inputs, batch.missing
        if complete.numel():
            subset = {name: tensor[complete] for name, tensor in batch.inputs.items()}
            text_dropped = self.backbone.drop_modality(subset, MissingType.TEXT_MISSING)
            image_dropped = self.backbone.drop_modality(subset, MissingType.IMAGE_MISSING)
            inputs = concatenate_inputs([batch.inputs, text_dropped, image_dropped])
            copy_missing = [
                torch.full_like(complete, MissingType.TEXT_MISSING),
                torch.full_like(complete, MissingType.IMAGE_MISSING),
            ]
            missing = torch.cat([batch.missing, *[part.to(batch.missing.dtype) for part in copy_missing]])

        text, image = modality_queries(frozen_pass(self.backbone, inputs, missing))
        size = batch.size
        return (text[:size], image[:size]), (text[size:], image[size:]), complete

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        (text, image), copies, complete = self.query_pass(batch, training)
        text_query, image_query = self.rebuilt_queries(text, image, batch.missing)

        blocks = self.current_task + 1
        trainable = self.current_task if training else None
        text_prompts, _ = self.text_pool.compose(text_query.detach(), blocks, trainable)
        image_prompts, _ = self.image_pool.compose(image_query.detach(), blocks, trainable)
        prefixes = {}
        for layer in self.text_pool.layers:
            text_key, text_value = split_prefix(text_prompts[layer])
            image_key, image_value = split_prefix(image_prompts[layer])
            prefixes[layer] = (torch.cat([text_key, image_key], dim=1), torch.cat([text_value, image_value], dim=1))

        context = ForwardContext(missing=batch.missing, prefixes=prefixes)
        features = self.backbone(batch.inputs, context).pooled

        info: dict[str, Any] = {"backbone_passes": 2}
        if training:
            reconstruction = self.reconstruction_loss(text, image, copies, complete)
            terms = {"reconstruction": self.reconstruction_weight * reconstruction}
            if self.ortho_weight > 0:
                penalty = self.text_pool.orthogonality_penalty(blocks, self.current_task)
                penalty = penalty + self.image_pool.orthogonality_penalty(blocks, self.current_task)
                terms["orthogonality"] = self.ortho_weight * penalty
            info["loss_terms"] = terms
            info["logged"] = {"reconstruction_copies": torch.tensor(float(2 * complete.numel()))}
        return features, info

