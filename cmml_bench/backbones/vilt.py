"""ViLT backbones: pretrained ViLT and a tiny randomly initialised ViLT.

Both reuse the modules of ``transformers.ViltModel`` and run the encoder of
``cmml_bench.backbones.base``. The embedding step is our own, for two reasons:

- Hugging Face's ``ViltEmbeddings.visual_embed`` reorders image patches with
  ``torch.multinomial``. That draws from the global RNG and changes the order
  of floating-point sums, so a sample's output could depend on its batch.
  Here every image is resized to one square size and its patches stay in
  raster order, so no patch is sampled or padded.
- Text longer than ViLT's 40 learned positions needs the position table
  stretched by linear interpolation, as the published CMML code does.

Text is always padded to ``max_text_length`` so that a sample's tensors never
depend on the other samples in its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cmml_bench.backbones.base import (
    Backbone,
    TokenSequence,
    TransformerLayer,
    grid_positions,
    interpolate_positions,
)
from cmml_bench.backbones.tokenizer import local_bert_tokenizer
from cmml_bench.data.images import load_rgb, missing_image
from cmml_bench.data.types import MissingType, Sample

DEFAULT_VILT = "dandelin/vilt-b32-mlm"

# ViLT's image processor normalises every channel with mean 0.5 and std 0.5.
VILT_MEAN = 0.5
VILT_STD = 0.5


class ViltBackbone(Backbone):
    """ViLT as a frozen encoder with the adapter and prompt contract."""

    def __init__(self, model, tokenizer, *, name: str, max_text_length: int, image_size: int) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.image_size = image_size

        config = model.config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.patch_size = config.patch_size
        if image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {self.patch_size}")

        self._build_positions(config)
        self.layers = nn.ModuleList(_vilt_layer(layer, config) for layer in model.encoder.layer)
        self.final_norm = model.layernorm
        self.freeze()

    def _build_positions(self, config) -> None:
        text_table = self.model.embeddings.text_embeddings.position_embeddings.weight.detach()
        self.text_positions = nn.Parameter(interpolate_positions(text_table, self.max_text_length))

        patch_table = self.model.embeddings.position_embeddings.detach()[0]
        grid = self.image_size // self.patch_size
        spatial = grid_positions(patch_table[1:], grid)
        self.image_positions = nn.Parameter(torch.cat([patch_table[:1], spatial], dim=0))

    def prepare(self, samples: Sequence[Sample], missing: Sequence[MissingType]) -> dict[str, torch.Tensor]:
        texts = ["" if kind == MissingType.TEXT_MISSING else sample.text for sample, kind in zip(samples, missing)]
        encoded = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )

        pixels = [self._pixels(sample, kind) for sample, kind in zip(samples, missing)]
        return {
            "input_ids": encoded["input_ids"],
            "text_attention_mask": encoded["attention_mask"].to(torch.bool),
            "pixel_values": torch.from_numpy(np.stack(pixels)),
        }

    def drop_modality(self, inputs: dict[str, torch.Tensor], kind: MissingType) -> dict[str, torch.Tensor]:
        dropped = dict(inputs)
        batch = inputs["input_ids"].shape[0]
        if kind == MissingType.TEXT_MISSING:
            encoded = self.tokenizer(
                [""] * batch, padding="max_length", truncation=True, max_length=self.max_text_length, return_tensors="pt"
            )
            dropped["input_ids"] = encoded["input_ids"].to(inputs["input_ids"].device)
            dropped["text_attention_mask"] = encoded["attention_mask"].to(torch.bool).to(inputs["input_ids"].device)
        elif kind == MissingType.IMAGE_MISSING:
            pixels = torch.from_numpy(self._pixels(None, MissingType.IMAGE_MISSING))
            pixels = pixels.to(inputs["pixel_values"].device, inputs["pixel_values"].dtype)
            dropped["pixel_values"] = pixels.expand_as(inputs["pixel_values"]).clone()
        else:
            raise ValueError(f"drop_modality expects TEXT_MISSING or IMAGE_MISSING; got {kind!r}")
        return dropped

    def _pixels(self, sample: Sample | None, kind: MissingType) -> np.ndarray:
        size = (self.image_size, self.image_size)
        if kind == MissingType.IMAGE_MISSING:
            image = missing_image(size)
        else:
            image = load_rgb(sample.image_path).resize(size, resample=3)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - VILT_MEAN) / VILT_STD
        return array.transpose(2, 0, 1).copy()

    def embed(self, inputs: dict[str, torch.Tensor]) -> TokenSequence:
        embeddings = self.model.embeddings
        text = embeddings.text_embeddings

        input_ids = inputs["input_ids"]
        text_mask = inputs["text_attention_mask"]
        zeros = torch.zeros_like(input_ids)
        text_tokens = text.word_embeddings(input_ids) + self.text_positions[: input_ids.shape[1]].unsqueeze(0)
        text_tokens = text_tokens + text.token_type_embeddings(zeros)
        text_tokens = text.dropout(text.LayerNorm(text_tokens))
        text_tokens = text_tokens + embeddings.token_type_embeddings(zeros)

        patches = embeddings.patch_embeddings.projection(inputs["pixel_values"].to(text_tokens.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        image_tokens = torch.cat([embeddings.cls_token.expand(batch, -1, -1), patches], dim=1)
        image_tokens = embeddings.dropout(image_tokens + self.image_positions.unsqueeze(0))
        image_types = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        image_tokens = image_tokens + embeddings.token_type_embeddings(image_types)

        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
        no_text = torch.zeros_like(image_mask)
        no_image = torch.zeros_like(text_mask)
        return TokenSequence(
            embeddings=torch.cat([text_tokens, image_tokens], dim=1),
            attention_mask=torch.cat([text_mask, image_mask], dim=1),
            text_mask=torch.cat([text_mask, no_text], dim=1),
            image_mask=torch.cat([no_image, image_mask], dim=1),
        )

    def pool(self, hidden: torch.Tensor, sequence: TokenSequence) -> torch.Tensor:
        return self.model.pooler(hidden)


def _vilt_layer(layer, config) -> TransformerLayer:
    attention = layer.attention
    return TransformerLayer(
        query=attention.attention.query,
        key=attention.attention.key,
        value=attention.attention.value,
        attention_output=attention.output.dense,
        intermediate=layer.intermediate.dense,
        output=layer.output.dense,
        norm_attention=layer.layernorm_before,
        norm_mlp=layer.layernorm_after,
        activation=layer.intermediate.intermediate_act_fn,
        num_heads=config.num_attention_heads,
        pre_norm=True,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
    )


def build_vilt(max_text_length: int, options: dict) -> ViltBackbone:
    """Load pretrained ViLT from a local folder or a Hugging Face hub id.

    Options: ``source`` (folder or hub id, default ``dandelin/vilt-b32-mlm``)
    and ``image_size`` (pixels of the square input, default 384).
    """
    from transformers import AutoTokenizer, ViltModel

    source = str(options.get("source", DEFAULT_VILT))
    image_size = int(options.get("image_size", 384))
    local = Path(source).expanduser()
    local_only = local.is_dir()
    location = str(local) if local_only else source

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = ViltModel.from_pretrained(location, local_files_only=local_only, add_pooling_layer=True)
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"could not load ViLT from {source!r}: {error}\n"
            "Pass a folder that holds a saved ViltModel and its tokenizer with "
            "--set backbone.source=/path/to/vilt, or a hub id that is in the local "
            "Hugging Face cache. On a machine without hub access use the offline "
            "backbone instead: --backbone minilm-mobilenet."
        ) from error

    return ViltBackbone(model, tokenizer, name="vilt", max_text_length=max_text_length, image_size=image_size)


def tiny_vilt_config(**overrides):
    """Return the config of the tiny ViLT: 2 layers, width 32, 32-pixel images."""
    from transformers import ViltConfig

    settings = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    settings.update(overrides)
    return ViltConfig(**settings)


def build_vilt_tiny(max_text_length: int, options: dict) -> ViltBackbone:
    """Build a small randomly initialised ViLT for fast code-path tests.

    The weights come from ``options['init_seed']`` (default 0), so two builds
    are identical. The tokenizer is the BERT uncased vocabulary packaged with
    MiniLM, the same vocabulary as ViLT's.
    """
    from transformers import ViltModel

    config = tiny_vilt_config(**options.get("config", {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.get("init_seed", 0)))
        model = ViltModel(config, add_pooling_layer=True)

    tokenizer = local_bert_tokenizer()
    return ViltBackbone(
        model,
        tokenizer,
        name="vilt-tiny",
        max_text_length=max_text_length,
        image_size=int(options.get("image_size", config.image_size)),
    )
