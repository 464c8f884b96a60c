"""Shared pieces of the prompt-based methods (L2P, DualPrompt, CODA-Prompt, MAP, RebQ).

- ``scaled_layers``: maps a layer span given for a 12-layer ViT to a backbone
  of another depth.
- ``cosine_similarity_matrix`` and ``top_n_indices``: key-query matching.
- ``PromptPool``: L2P's pool of prompts with learnable keys.
- ``ComponentPool``: CODA-Prompt's decomposed prompts, grown task by task.
- ``split_prefix`` and ``merge_prefixes``: prompt tensors to key/value prefixes.
- ``frozen_pass``: the extra frozen forward pass that computes queries.
- ``PromptMethod``: the training and prediction loop the five methods share.

Every selection here is per sample and batched: a sample's prompts depend
only on that sample's own query.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.backbones.base import Backbone, EncoderOutput, ForwardContext
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, Method, Prediction, TaskLayout, classification_loss
from cmml_bench.methods.heads import ExpandableHead

# Layer spans in the prompt papers refer to ViT-B, which has 12 layers.
REFERENCE_DEPTH = 12


def scaled_layers(start: int, stop: int, depth: int, reference_depth: int = REFERENCE_DEPTH) -> list[int]:
    """Map the layer span [start, stop) of a ``reference_depth``-layer model to ``depth`` layers.

    Both ends are scaled by depth / reference_depth and rounded up. The span
    keeps at least one layer, so a 2-layer backbone still gets prompts. With
    12 layers the span is unchanged.
    """
    scale = depth / reference_depth
    first = min(math.ceil(start * scale), depth - 1)
    last = min(math.ceil(stop * scale), depth)
    if last <= first:
        last = first + 1
    return list(range(first, last))


def resolve_layers(option: Any, default_span: tuple[int, int], depth: int) -> list[int]:
    """Return the prompt layers: an explicit list from the YAML, or the scaled default span."""
    if option is None:
        return scaled_layers(default_span[0], default_span[1], depth)

    layers = [int(layer) for layer in option]
    invalid = [layer for layer in layers if not 0 <= layer < depth]
    if invalid or not layers:
        raise ValueError(f"prompt layers {layers} are invalid for a backbone of {depth} layers")
    return layers


def cosine_similarity_matrix(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Return the (B, M) cosine similarities of queries (B, D) and keys (M, D)."""
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).t()


def top_n_indices(similarity: torch.Tensor, count: int) -> torch.Tensor:
    """Return the (B, count) indices of the largest similarities of each row, best first."""
    return similarity.topk(count, dim=1).indices


def split_prefix(prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split prompts (B, L, D) into a key prefix (first L/2 rows) and a value prefix (last L/2)."""
    length = prompts.shape[1]
    if length % 2:
        raise ValueError(f"a prefix prompt needs an even length to split into keys and values; got {length}")
    half = length // 2
    return prompts[:, :half], prompts[:, half:]


def merge_prefixes(
    *groups: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Concatenate the key and value prefixes of several groups layer by layer."""
    merged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for group in groups:
        for layer, (key, value) in group.items():
            if layer in merged:
                old_key, old_value = merged[layer]
                key = torch.cat([old_key, key], dim=1)
                value = torch.cat([old_value, value], dim=1)
            merged[layer] = (key, value)
    return merged


def frozen_pass(backbone: Backbone, inputs: dict[str, torch.Tensor], missing: torch.Tensor) -> EncoderOutput:
    """Run the prompt-free, adapter-free backbone without gradients.

    Its pooled output equals ``backbone.frozen_features``. Methods that need
    per-modality queries read ``hidden`` with the sequence masks.
    """
    with torch.no_grad():
        context = ForwardContext(missing=missing, adapters_enabled=False)
        return backbone(inputs, context)


def uniform_parameter(*shape: int, bound: float = 1.0) -> nn.Parameter:
    """Return a parameter drawn from U(-bound, bound), the prompt and key init of L2P and DualPrompt."""
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def orthogonalise_rows(new: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """Return the rows of ``new`` (N, F) made orthonormal to each other and to the rows of ``old`` (Gram-Schmidt).

    Once the rows span all F dimensions, a further row keeps its random
    direction, normalised, because no orthogonal direction is left.
    """
    features = new.shape[1]
    basis = new.new_zeros(0, features)
    if old is not None and len(old):
        basis = torch.linalg.qr(old.t()).Q.t()

    rows = []
    for row in new:
        residual = row - (basis @ row) @ basis
        if len(basis) >= features or residual.norm() < 1e-6 * row.norm():
            rows.append(row / row.norm().clamp_min(1e-12))
            continue
        residual = residual / residual.norm()
        basis = torch.cat([basis, residual[None]], dim=0)
        rows.append(residual)
    return torch.stack(rows)


class PromptPool(nn.Module):
    """A pool of M prompts (M, L, D), each with a learnable key (M, D): L2P's prompt pool."""

    def __init__(self, size: int, length: int, width: int) -> None:
        super().__init__()
        self.prompts = uniform_parameter(size, length, width)
        self.keys = uniform_parameter(size, width)

    def select(self, queries: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the chosen prompts (B, count*L, D), their indices (B, count) and their similarities (B, count)."""
        similarity = cosine_similarity_matrix(queries, self.keys)
        indices = top_n_indices(similarity, count)
        chosen = self.prompts[indices]
        batch, _, length, width = chosen.shape
        return chosen.reshape(batch, count * length, width), indices, similarity.gather(1, indices)


class ComponentPool(nn.Module):
    """CODA-Prompt's decomposed prompts for a set of layers, grown by a block of components per task.

    Each task adds, for every layer, ``per_task`` components (L, D) with a key
    (D) and an attention vector (D). A sample's prompt at a layer is the sum
    of the components weighted by the cosine similarity between the
    attention-weighted query (query * attention) and each key. New rows are
    initialised orthogonal to the older ones (Gram-Schmidt), as CODA-Prompt
    does. Blocks of earlier tasks are frozen and detached.
    """

    def __init__(self, layers: list[int], per_task: int, length: int, width: int) -> None:
        super().__init__()
        self.layers = list(layers)
        self.per_task = per_task
        self.length = length
        self.width = width
        self.components = nn.ParameterList()
        self.keys = nn.ParameterList()
        self.attention = nn.ParameterList()

    @property
    def num_blocks(self) -> int:
        return len(self.components)

    def add_task(self) -> None:
        """Append one block of components, keys and attention vectors, orthogonal to the older blocks."""
        depth, count = len(self.layers), self.per_task
        components = self._orthogonal_block(self.components, depth, count, self.length * self.width)
        self.components.append(nn.Parameter(components.reshape(depth, count, self.length, self.width)))
        self.keys.append(nn.Parameter(self._orthogonal_block(self.keys, depth, count, self.width)))
        self.attention.append(nn.Parameter(self._orthogonal_block(self.attention, depth, count, self.width)))

    @staticmethod
    def _orthogonal_block(existing: nn.ParameterList, depth: int, count: int, features: int) -> torch.Tensor:
        block = torch.empty(depth, count, features).uniform_(0.0, 1.0)
        for layer in range(depth):
            old = None
            if len(existing):
                old = torch.cat([item[layer].detach().reshape(-1, features) for item in existing], dim=0)
            block[layer] = orthogonalise_rows(block[layer], old)
        return block

    def set_trainable(self, block: int | None) -> None:
        """Make only block ``block`` trainable (None freezes every block)."""
        for index in range(self.num_blocks):
            trainable = index == block
            for store in (self.components, self.keys, self.attention):
                store[index].requires_grad_(trainable)

    def stacked(self, blocks: int, trainable_block: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return components (layers, K, L, D), keys and attention (layers, K, D) of the first ``blocks`` blocks.

        Blocks other than ``trainable_block`` are detached, so no gradient reaches them.
        """
        parts: list[list[torch.Tensor]] = [[], [], []]
        for index in range(blocks):
            for store, part in zip((self.components, self.keys, self.attention), parts):
                tensor = store[index]
                part.append(tensor if index == trainable_block else tensor.detach())
        return tuple(torch.cat(part, dim=1) for part in parts)  # type: ignore[return-value]

    def weights(self, queries: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Return the component weights (B, layers, K): cos(query * attention_k, key_k)."""
        weighted = queries[:, None, None, :] * attention[None]
        return (F.normalize(weighted, dim=-1) * F.normalize(keys, dim=-1)[None]).sum(-1)

    def compose(
        self, queries: torch.Tensor, blocks: int, trainable_block: int | None
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Return per-layer prompts {layer: (B, L, D)} and the weights (B, layers, K)."""
        components, keys, attention = self.stacked(blocks, trainable_block)
        weights = self.weights(queries, keys, attention)
        prompts = torch.einsum("bnk,nkld->bnld", weights, components)
        return {layer: prompts[:, index] for index, layer in enumerate(self.layers)}, weights

    def orthogonality_penalty(self, blocks: int, trainable_block: int) -> torch.Tensor:
        """Return ||X X^T - I||^2 summed over layers and over components, keys and attention vectors.

        X contains the rows of the first ``blocks`` blocks, so the trainable rows
        are pushed towards orthogonality with the frozen ones.
        """
        components, keys, attention = self.stacked(blocks, trainable_block)
        total = components.new_zeros(())
        for matrix in (components.flatten(2), keys, attention):
            gram = matrix @ matrix.transpose(1, 2)
            identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            total = total + ((gram - identity) ** 2).sum()
        return total


class PromptMethod(Method):
    """The loop shared by the prompt methods.

    A subclass implements ``add_task_modules(task)``, ``set_trainable(task)``
    and ``encode(batch, task, training)``. ``encode`` returns the features
    for the head and a dict that may hold ``loss_terms`` (named extra losses),
    ``selected_task`` and ``backbone_passes``.

    ``mask_old_classes``: train on the logits of the current task's classes
    only and keep earlier head blocks frozen, as L2P, DualPrompt and
    CODA-Prompt do. When False, the loss covers every seen class and every
    head block trains (sequential fine-tuning of the classifier).
    """

    mask_old_classes: bool = True

    def __init__(self, backbone: Backbone, layout: TaskLayout, options: dict[str, Any]) -> None:
        super().__init__(backbone, layout, options)
        self.head = ExpandableHead(backbone.hidden_size, layout)
        self.prediction_batches = {TASK_AGNOSTIC: 0, TASK_AWARE: 0}
        self.prediction_passes = {TASK_AGNOSTIC: 0, TASK_AWARE: 0}

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self.head.grow(task)
        self.add_task_modules(task)

        for parameter in self.parameters():
            parameter.requires_grad_(False)
        for index, block in enumerate(self.head.blocks):
            block.requires_grad_(index == task or not self.mask_old_classes)
        self.set_trainable(task)

    def add_task_modules(self, task: int) -> None:
        """Create the modules task ``task`` adds. Must not read data."""

    def set_trainable(self, task: int) -> None:
        """Set ``requires_grad=True`` on the method's parameters that train during ``task``."""
        raise NotImplementedError

    def encode(self, batch: Batch, task: int | None, training: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def training_loss(self, batch: Batch, task: int) -> dict[str, torch.Tensor]:
        features, info = self.encode(batch, task, training=True)
        classification = self._classification_loss(features, batch.targets, task)

        losses = {"classification": classification}
        total = classification
        for name, value in info.get("loss_terms", {}).items():
            losses[name] = value
            total = total + value
        losses.update(info.get("logged", {}))
        losses["loss"] = total
        return losses

    def _classification_loss(self, features: torch.Tensor, targets: torch.Tensor, task: int) -> torch.Tensor:
        if not self.mask_old_classes:
            return classification_loss(self.head(features), targets, self.layout.multi_label)

        start, _ = self.layout.class_range(task)
        logits = self.head.block(task)(features)
        if self.layout.multi_label:
            return classification_loss(logits, targets[:, start:], True)
        return classification_loss(logits, targets - start, False)

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        features, info = self.encode(batch, task, training=False)
        logits = self.head(features)

        setting = TASK_AGNOSTIC if task is None else TASK_AWARE
        self.prediction_batches[setting] += 1
        self.prediction_passes[setting] += int(info.get("backbone_passes", 1))
        return Prediction(logits=logits, selected_task=info.get("selected_task"))

    def diagnostics(self) -> dict[str, Any]:
        """Report, per setting, the backbone passes per prediction batch, the extra frozen query pass included."""
        averages = {
            setting: self.prediction_passes[setting] / count if count else None
            for setting, count in self.prediction_batches.items()
        }
        return {
            "backbone_passes_per_prediction_batch": averages,
            "prediction_batches": dict(self.prediction_batches),
        }

    def reset_diagnostics(self) -> None:
        for setting in self.prediction_batches:
            self.prediction_batches[setting] = 0
            self.prediction_passes[setting] = 0
