"""The backbone contract shared by every method.

A backbone is a frozen multimodal transformer over one token sequence:
``[CLS] text tokens ... image tokens ...``. It exposes

- ``prepare(samples, missing)``: CPU-side collation (tokenisation, image
  loading) that applies the missing-modality mask;
- ``embed(inputs)``: the layer-0 token sequence with its text and image
  segments;
- ``forward(inputs, context)``: the encoder pass, returning the pooled output
  and the final hidden states.

Methods change the computation in two ways only:

1. Adapters. ``set_projection(layer, kind, adapter)`` replaces the query, key
   or value projection of one layer with a ``ProjectionAdapter``. The encoder
   calls an adapter as ``adapter(x, state)``: ``state`` is a ``LayerState``
   passed as an explicit argument. It carries the normalised layer input, the
   text and image masks, the per-sample missing types and the method's own
   per-sample data from the ``ForwardContext``. Nothing travels as an
   attribute on a tensor.
2. Prompts. ``ForwardContext.prompts[layer]`` contains tokens (B, P, D) that are
   inserted right after [CLS] before that layer runs, replacing the prompt
   tokens of an earlier layer (deep prompt tuning). Without a new entry the
   earlier prompts travel on. ``ForwardContext.prefixes[layer]`` contains
   (key prefix, value prefix), each (B, P, D) in the projected space, that are
   prepended to that layer's attention keys and values (prefix tuning).

All backbone parameters are frozen when built. A method unfreezes what it
trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cmml_bench.data.types import MissingType, Sample

PROJECTION_KINDS = ("query", "key", "value")


@dataclass
class TokenSequence:
    """The layer-0 token sequence of a batch.

    ``attention_mask`` marks positions that attention may use (padding is
    False). ``text_mask`` marks non-padding text tokens, including [CLS] and
    [SEP]. ``image_mask`` marks image tokens.
    """

    embeddings: torch.Tensor
    attention_mask: torch.Tensor
    text_mask: torch.Tensor
    image_mask: torch.Tensor


@dataclass
class ForwardContext:
    """Per-forward inputs that a method hands to the backbone.

    ``missing`` contains one ``MissingType`` value per sample. ``extras`` contains a
    method's own per-sample tensors (for example the task chosen for each
    sample); adapters read them from ``LayerState.context``.
    """

    missing: torch.Tensor
    prompts: dict[int, torch.Tensor] = field(default_factory=dict)
    prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    adapters_enabled: bool = True
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerState:
    """Inputs of one layer's adapters, passed to them as an explicit argument.

    ``hidden`` is the normalised input of the attention projections, the same
    tensor the wrapped projection receives. The masks are aligned with it, so
    prompt positions are False in ``text_mask`` and ``image_mask``. ``cache``
    is shared by the query, key and value adapters of the layer during one
    forward pass, so routing signals are computed once per layer.
    """

    layer: int
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    text_mask: torch.Tensor
    image_mask: torch.Tensor
    context: ForwardContext
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncoderOutput:
    """Result of one encoder pass.

    ``hidden`` contains the final token states without prompt positions, aligned
    with ``sequence``. ``prompt_hidden`` contains the final states of the prompt
    tokens, or None when no prompt was inserted.
    """

    pooled: torch.Tensor
    hidden: torch.Tensor
    prompt_hidden: torch.Tensor | None
    sequence: TokenSequence


class ProjectionAdapter(nn.Module):
    """Base class for a module that replaces a frozen query/key/value projection.

    Subclasses implement ``delta(x, state)``. The frozen projection stays
    reachable as ``self.base`` and its weights are not copied.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        output = self.base(x)
        if not state.context.adapters_enabled:
            return output
        return output + self.delta(x, state)

    def delta(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        raise NotImplementedError


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` (B, N, D) over positions where ``mask`` (B, N) is True.

    A row with no True position gives a zero vector.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


class TransformerLayer(nn.Module):
    """One encoder layer built from existing pretrained submodules.

    The layer reuses the modules of a Hugging Face model (the weights are
    shared, not copied) and runs its own forward pass, so adapters receive
    the ``LayerState`` argument and prefixes join the attention keys and
    values. ``pre_norm`` selects ViT/ViLT ordering (norm before attention and
    before the MLP) versus BERT ordering (norm after each residual).
    """

    def __init__(
        self,
        *,
        query: nn.Linear,
        key: nn.Linear,
        value: nn.Linear,
        attention_output: nn.Linear,
        intermediate: nn.Linear,
        output: nn.Linear,
        norm_attention: nn.LayerNorm,
        norm_mlp: nn.LayerNorm,
        activation: Callable[[torch.Tensor], torch.Tensor],
        num_heads: int,
        pre_norm: bool,
        hidden_dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.query = query
        self.key = key
        self.value = value
        self.attention_output = attention_output
        self.intermediate = intermediate
        self.output = output
        self.norm_attention = norm_attention
        self.norm_mlp = norm_mlp
        self.activation = activation
        self.num_heads = num_heads
        self.pre_norm = pre_norm
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attention_dropout = attention_dropout

    def project(self, kind: str, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        module = getattr(self, kind)
        if isinstance(module, ProjectionAdapter):
            return module(x, state)
        return module(x)

    def attention(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor,
        state: LayerState,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        batch, length, width = x.shape
        query = self.project("query", x, state)
        key = self.project("key", x, state)
        value = self.project("value", x, state)

        key_mask = attention_mask
        if prefix is not None:
            key_prefix, value_prefix = prefix
            key = torch.cat([key_prefix.to(key.dtype), key], dim=1)
            value = torch.cat([value_prefix.to(value.dtype), value], dim=1)
            prefix_mask = attention_mask.new_ones(batch, key_prefix.shape[1])
            key_mask = torch.cat([prefix_mask, attention_mask], dim=1)

        head_dim = width // self.num_heads
        query = query.view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        key = key.view(batch, key.shape[1], self.num_heads, head_dim).transpose(1, 2)
        value = value.view(batch, value.shape[1], self.num_heads, head_dim).transpose(1, 2)

        mask = key_mask[:, None, None, :].to(torch.bool)
        dropout = self.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.hidden_dropout(self.attention_output(context))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_dropout(self.output(self.activation(self.intermediate(x))))

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        state: LayerState,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.pre_norm:
            hidden = hidden + self.attention(state.hidden, attention_mask, state, prefix)
            return hidden + self.mlp(self.norm_mlp(hidden))

        hidden = self.norm_attention(hidden + self.attention(state.hidden, attention_mask, state, prefix))
        return self.norm_mlp(hidden + self.mlp(hidden))

    def attention_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the tensor the query/key/value projections receive."""
        return self.norm_attention(hidden) if self.pre_norm else hidden


def insert_prompts(
    hidden: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    previous_count: int,
    prompts: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Replace the ``previous_count`` prompt tokens after [CLS] with ``prompts``.

    ``masks`` is (attention, text, image). Prompt positions are attended to and
    belong to neither modality.
    """
    batch, count = prompts.shape[0], prompts.shape[1]
    keep = torch.cat([hidden[:, :1], hidden[:, 1 + previous_count :]], dim=1)
    hidden = torch.cat([keep[:, :1], prompts.to(hidden.dtype), keep[:, 1:]], dim=1)

    new_masks = []
    for index, mask in enumerate(masks):
        kept = torch.cat([mask[:, :1], mask[:, 1 + previous_count :]], dim=1)
        fill = mask.new_full((batch, count), index == 0)
        new_masks.append(torch.cat([kept[:, :1], fill, kept[:, 1:]], dim=1))
    return hidden, (new_masks[0], new_masks[1], new_masks[2])


class Backbone(nn.Module):
    """A frozen multimodal encoder that follows the contract of this module.

    Subclasses set ``layers`` (a ModuleList of ``TransformerLayer``),
    ``hidden_size``, ``num_heads`` and ``final_norm``, and implement
    ``prepare``, ``embed`` and ``pool``.
    """

    name: str = "backbone"

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.hidden_size = 0
        self.num_heads = 0
        self.final_norm: nn.Module = nn.Identity()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, samples: Sequence[Sample], missing: Sequence[MissingType]) -> dict[str, torch.Tensor]:
        """Collate samples into CPU tensors, applying the missing-modality mask."""
        raise NotImplementedError

    def embed(self, inputs: dict[str, torch.Tensor]) -> TokenSequence:
        """Build the layer-0 token sequence from prepared inputs."""
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor, sequence: TokenSequence) -> torch.Tensor:
        """Reduce final hidden states (prompts removed) to one vector per sample."""
        raise NotImplementedError

    def drop_modality(self, inputs: dict[str, torch.Tensor], kind: MissingType) -> dict[str, torch.Tensor]:
        """Return a copy of prepared inputs with one modality removed, as ``prepare`` would remove it.

        ``kind`` is ``TEXT_MISSING`` or ``IMAGE_MISSING``. Methods that train
        on modality-dropped copies of complete samples (RebQ) use it.
        """
        raise NotImplementedError(f"backbone {self.name!r} does not implement drop_modality")

    def freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def projection(self, layer: int, kind: str) -> nn.Module:
        self._check_projection(layer, kind)
        return getattr(self.layers[layer], kind)

    def set_projection(self, layer: int, kind: str, module: nn.Module) -> None:
        """Replace one query/key/value projection, usually with a ``ProjectionAdapter``."""
        self._check_projection(layer, kind)
        setattr(self.layers[layer], kind, module)

    def base_projection(self, layer: int, kind: str) -> nn.Linear:
        """Return the frozen linear projection under any adapter."""
        module = self.projection(layer, kind)
        while isinstance(module, ProjectionAdapter):
            module = module.base
        return module

    def _check_projection(self, layer: int, kind: str) -> None:
        if kind not in PROJECTION_KINDS:
            raise ValueError(f"unknown projection {kind!r}; expected one of {', '.join(PROJECTION_KINDS)}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range; this backbone has {self.num_layers} layers")

    def forward(self, inputs: dict[str, torch.Tensor], context: ForwardContext) -> EncoderOutput:
        sequence = self.embed(inputs)
        hidden = sequence.embeddings
        masks = (sequence.attention_mask, sequence.text_mask, sequence.image_mask)
        prompt_count = 0

        for index, layer in enumerate(self.layers):
            if index in context.prompts:
                prompts = context.prompts[index]
                hidden, masks = insert_prompts(hidden, masks, prompt_count, prompts)
                prompt_count = prompts.shape[1]

            state = LayerState(
                layer=index,
                hidden=layer.attention_input(hidden),
                attention_mask=masks[0],
                text_mask=masks[1],
                image_mask=masks[2],
                context=context,
            )
            hidden = layer(hidden, masks[0], state, context.prefixes.get(index))

        hidden = self.final_norm(hidden)
        prompt_hidden = hidden[:, 1 : 1 + prompt_count] if prompt_count else None
        token_hidden = torch.cat([hidden[:, :1], hidden[:, 1 + prompt_count :]], dim=1)
        pooled = self.pool(token_hidden, sequence)
        return EncoderOutput(pooled=pooled, hidden=token_hidden, prompt_hidden=prompt_hidden, sequence=sequence)

    def frozen_features(self, inputs: dict[str, torch.Tensor], missing: torch.Tensor) -> torch.Tensor:
        """Return the pooled output of the unadapted, prompt-free backbone.

        Prompt methods and task-key memories use it as their query. It runs
        without gradients and with adapters disabled.
        """
        with torch.no_grad():
            context = ForwardContext(missing=missing, adapters_enabled=False)
            return self.forward(inputs, context).pooled


def interpolate_positions(weight: torch.Tensor, length: int) -> torch.Tensor:
    """Return ``length`` rows of a (positions, D) table of learned positions.

    A shorter length takes the first rows unchanged. A longer one stretches the
    whole table by linear interpolation.
    """
    if length <= weight.shape[0]:
        return weight[:length].clone()
    table = weight.t().unsqueeze(0)
    stretched = F.interpolate(table, size=length, mode="linear", align_corners=True)
    return stretched.squeeze(0).t().contiguous()


def grid_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a square (side*side, D) table of patch positions to grid*grid rows (bilinear)."""
    side = int(math.isqrt(table.shape[0]))
    if side * side != table.shape[0]:
        raise ValueError(f"patch position table of {table.shape[0]} rows is not a square grid")
    if side == grid:
        return table.clone()
    image = table.t().reshape(1, table.shape[1], side, side)
    resized = F.interpolate(image, size=(grid, grid), mode="bilinear", align_corners=True)
    return resized.reshape(table.shape[1], grid * grid).t().contiguous()
