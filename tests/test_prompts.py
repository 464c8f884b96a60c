"""Tests of the prompt-based methods (L2P, DualPrompt, CODA-Prompt, MAP, RebQ) on the tiny ViLT.

Batches are built from random token ids and pixels, so no image file is read.
Hand-computed values are worked out in the comment next to each check.
"""

from __future__ import annotations

import math

import pytest
import torch

from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext
from cmml_bench.data.types import MissingType
from cmml_bench.methods import load_method_config, method_class
from cmml_bench.methods.base import Batch, TaskLayout
from cmml_bench.methods.prompting import (
    ComponentPool,
    PromptPool,
    cosine_similarity_matrix,
    frozen_pass,
    scaled_layers,
    top_n_indices,
)
from cmml_bench.methods.rebq import modality_queries

TEXT_LENGTH = 12
METHODS = ("l2p", "dualprompt", "coda_prompt", "map", "rebq")
LAYOUT = TaskLayout(task_classes=((0, 1, 2), (3, 4, 5)), multi_label=False)

COMPLETE = int(MissingType.COMPLETE)
TEXT_MISSING = int(MissingType.TEXT_MISSING)
IMAGE_MISSING = int(MissingType.IMAGE_MISSING)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("vilt-tiny", TEXT_LENGTH, {})


def make_batch(backbone, missing: list[int], targets: list[int], seed: int) -> Batch:
    """Build a batch of random text and images; missing text is [CLS] [SEP], a missing image is all ones."""
    generator = torch.Generator().manual_seed(seed)
    size = len(missing)
    input_ids = torch.randint(1000, 2000, (size, TEXT_LENGTH), generator=generator)
    input_ids[:, 0] = 101
    input_ids[:, 6] = 102
    input_ids[:, 7:] = 0
    text_mask = input_ids != 0
    pixels = torch.randn(size, 3, 32, 32, generator=generator)
    inputs = {"input_ids": input_ids, "text_attention_mask": text_mask, "pixel_values": pixels}

    missing_tensor = torch.tensor(missing)
    for kind in (MissingType.TEXT_MISSING, MissingType.IMAGE_MISSING):
        rows = missing_tensor == kind
        if rows.any():
            dropped = backbone.drop_modality({name: value[rows] for name, value in inputs.items()}, kind)
            for name in inputs:
                inputs[name][rows] = dropped[name]
    return Batch(inputs=inputs, missing=missing_tensor, targets=torch.tensor(targets), sample_ids=[str(i) for i in range(size)])


def build_method(backbone, name: str, layout: TaskLayout = LAYOUT, **overrides):
    config = load_method_config(name)
    options = {**config.method, **overrides}
    torch.manual_seed(0)
    return method_class(config.implementation)(backbone, layout, options)


def train_task(method, task: int, batch: Batch, steps: int = 3, weight_decay: float = 0.0) -> list[float]:
    method.begin_task(task)
    method.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        loss = method.training_loss(batch, task)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    method.end_task(task, [batch])
    method.eval()
    return losses


def task_batches(backbone) -> tuple[Batch, Batch]:
    first = make_batch(backbone, [COMPLETE, TEXT_MISSING, IMAGE_MISSING, COMPLETE], [0, 1, 2, 0], seed=1)
    second = make_batch(backbone, [IMAGE_MISSING, COMPLETE, TEXT_MISSING, COMPLETE], [3, 4, 5, 4], seed=2)
    return first, second


def trained_method(backbone, name: str):
    method = build_method(backbone, name)
    first, second = task_batches(backbone)
    train_task(method, 0, first)
    train_task(method, 1, second)
    return method


# Shared pieces


def test_scaled_layers_keep_twelve():
    assert scaled_layers(0, 2, 12) == [0, 1]
    assert scaled_layers(2, 5, 12) == [2, 3, 4]


def test_scaled_layers_shallow_backbones():
    # 6 layers: [0, ceil(1.0)) and [ceil(1.0), ceil(2.5)).
    assert scaled_layers(0, 2, 6) == [0]
    assert scaled_layers(2, 5, 6) == [1, 2]
    # 2 layers: [0, ceil(0.33)) and an empty [1, ceil(0.83)) widened to one layer.
    assert scaled_layers(0, 2, 2) == [0]
    assert scaled_layers(2, 5, 2) == [1]


def test_top_n_by_cosine_known_answer():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [-1.0, 0.2]])
    # Query 0: cosines 0.995, 0.0995, -0.995, 0.774 -> keys 0 then 3.
    # Query 1: cosines -0.981, 0.196, 0.981, -0.555 -> keys 2 then 1.
    similarity = cosine_similarity_matrix(queries, keys)
    assert similarity[0, 3].item() == pytest.approx(1.1 / (math.sqrt(1.01) * math.sqrt(2)), abs=1e-6)
    assert top_n_indices(similarity, 2).tolist() == [[0, 3], [2, 1]]


def test_prompt_pool_concatenates_chosen_prompts():
    pool = PromptPool(size=4, length=2, width=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]))
        pool.prompts.copy_(torch.arange(4.0)[:, None, None].expand(4, 2, 2))
    prompts, indices, similarity = pool.select(torch.tensor([[1.0, 0.1], [-1.0, 0.2]]), 2)

    assert prompts.shape == (2, 4, 2)
    # Prompt k is filled with the value k, in selection order.
    assert prompts[0, :, 0].tolist() == [0.0, 0.0, 3.0, 3.0]
    assert prompts[1, :, 0].tolist() == [2.0, 2.0, 1.0, 1.0]
    assert similarity[1, 0].item() == pytest.approx(1.0 / math.sqrt(1.04), abs=1e-6)


def test_coda_weights_hand_computed():
    pool = ComponentPool(layers=[0], per_task=2, length=2, width=3)
    pool.add_task()
    with torch.no_grad():
        pool.attention[0].copy_(torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]))
        pool.keys[0].copy_(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]]))
        pool.components[0].copy_(torch.stack([torch.ones(2, 3), 2 * torch.ones(2, 3)])[None])

    prompts, weights = pool.compose(torch.tensor([[1.0, 2.0, 3.0]]), blocks=1, trainable_block=None)
    # Component 0: q * a = (1, 0, 3), key (1, 0, 0): cosine 1 / sqrt(10).
    # Component 1: q * a = (0, 2, 3), key (0, 1, 1): cosine 5 / (sqrt(13) sqrt(2)).
    first, second = 1 / math.sqrt(10), 5 / (math.sqrt(13) * math.sqrt(2))
    assert weights[0, 0, 0].item() == pytest.approx(first, abs=1e-6)
    assert weights[0, 0, 1].item() == pytest.approx(second, abs=1e-6)
    assert prompts[0][0, 0, 0].item() == pytest.approx(first + 2 * second, abs=1e-6)


def test_coda_new_block_orthogonal_to_old():
    pool = ComponentPool(layers=[0, 1], per_task=3, length=2, width=8)
    pool.add_task()
    pool.add_task()
    keys = torch.cat([pool.keys[0][1], pool.keys[1][1]])
    gram = keys @ keys.t()
    assert torch.allclose(gram, torch.eye(6), atol=1e-5)


# Method-defining properties


def test_l2p_chooses_top_n_keys_of_frozen_query(backbone):
    method = build_method(backbone, "l2p", top_n=2)
    method.begin_task(0)
    method.eval()
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING, IMAGE_MISSING], [0, 1, 2], seed=3)
    queries = backbone.frozen_features(batch.inputs, batch.missing)
    with torch.no_grad():
        method.pool.keys.copy_(-queries.mean(dim=0).expand_as(method.pool.keys))
        method.pool.keys[4] = queries[0]
        method.pool.keys[7] = queries[1]
        method.pool.keys[2] = queries[2]

    _, info = method.encode(batch, None, training=False)
    # Each sample's own query is its best key (cosine 1).
    assert info["chosen_prompts"][:, 0].tolist() == [4, 7, 2]


def test_l2p_classifies_prompt_outputs(backbone):
    method = build_method(backbone, "l2p")
    method.begin_task(0)
    method.eval()
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING], [0, 1], seed=4)
    with torch.no_grad():
        features, info = method.encode(batch, None, training=False)
        chosen = method.pool.prompts[info["chosen_prompts"]].flatten(1, 2)
        output = backbone(batch.inputs, ForwardContext(missing=batch.missing, prompts={0: chosen}))

    assert output.prompt_hidden.shape == (2, 25, backbone.hidden_size)
    assert torch.allclose(features, output.prompt_hidden.mean(dim=1), atol=1e-6)
    assert not torch.allclose(features, output.pooled, atol=1e-3)


def test_dualprompt_e_prompt_by_key_match(backbone):
    method = build_method(backbone, "dualprompt")
    method.begin_task(0)
    method.begin_task(1)
    method.eval()
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING, COMPLETE], [0, 3, 1], seed=5)
    queries = backbone.frozen_features(batch.inputs, batch.missing)
    with torch.no_grad():
        method.e_keys[0].copy_(queries[0] + queries[2])
        method.e_keys[1].copy_(queries[1])

    similarity = cosine_similarity_matrix(queries, torch.stack([method.e_keys[0], method.e_keys[1]]))
    expected = similarity.argmax(dim=1)
    prediction = method.predict(batch, None)
    assert prediction.selected_task.tolist() == expected.tolist()
    assert expected.tolist() == [0, 1, 0]

    # Each sample's logits equal those of the task-aware pass with its chosen E-prompt.
    for task in (0, 1):
        forced = method.predict(batch, task).logits
        rows = expected == task
        assert torch.allclose(prediction.logits[rows], forced[rows], atol=1e-5)


def test_dualprompt_training_uses_current_task_prompt(backbone):
    method = build_method(backbone, "dualprompt")
    first, second = task_batches(backbone)
    train_task(method, 0, first)
    method.begin_task(1)
    method.train()
    method.zero_grad(set_to_none=True)
    loss = method.training_loss(second, 1)["loss"]
    loss.backward()
    assert method.e_prompts[1].grad is not None
    assert method.e_prompts[0].grad is None
    assert method.g_prompt.grad is not None


@pytest.mark.parametrize(
    "name, frozen_names",
    [
        ("coda_prompt", ["pool.components.0", "pool.keys.0", "pool.attention.0", "head.blocks.0.weight"]),
        ("rebq", ["text_pool.components.0", "image_pool.keys.0", "image_pool.attention.0", "head.blocks.0.bias"]),
        ("dualprompt", ["e_prompts.0", "e_keys.0", "head.blocks.0.weight"]),
    ],
)
def test_earlier_task_parameters_stay_frozen(backbone, name, frozen_names):
    method = build_method(backbone, name)
    first, second = task_batches(backbone)
    train_task(method, 0, first)
    method.begin_task(1)
    parameters = dict(method.named_parameters())
    before = {key: parameters[key].detach().clone() for key in frozen_names}
    trained_key = frozen_names[0].replace(".0", ".1")
    trained_before = parameters[trained_key].detach().clone()

    train_task(method, 1, second, steps=3, weight_decay=0.1)
    for key in frozen_names:
        assert torch.equal(parameters[key], before[key]), key
    assert not torch.equal(parameters[trained_key], trained_before)


def test_map_prompt_follows_missing_type(backbone):
    method = build_method(backbone, "map")
    method.begin_task(0)
    method.eval()
    missing = [COMPLETE, TEXT_MISSING, IMAGE_MISSING, TEXT_MISSING, COMPLETE]
    batch = make_batch(backbone, missing, [0, 1, 2, 0, 1], seed=6)
    chosen = method.prompts_for(batch.missing)
    for row, kind in enumerate(missing):
        assert torch.equal(chosen[method.layers[0]][row], method.prompts[kind, 0])

    before = method.predict(batch, None).logits
    with torch.no_grad():
        # A random change: a constant shift would vanish in the pre-attention LayerNorm.
        method.prompts[TEXT_MISSING].add_(torch.randn_like(method.prompts[TEXT_MISSING]))
    after = method.predict(batch, None).logits
    changed = (before - after).abs().amax(dim=1) > 1e-6
    # Only the two text-missing samples use the changed prompt.
    assert changed.tolist() == [False, True, False, True, False]


def test_map_trains_every_head_block(backbone):
    method = build_method(backbone, "map")
    method.begin_task(0)
    method.begin_task(1)
    assert method.head.blocks[0].weight.requires_grad
    assert method.head.blocks[1].weight.requires_grad


def test_rebq_no_complete_sample_gives_zero_reconstruction(backbone):
    method = build_method(backbone, "rebq")
    method.begin_task(0)
    method.train()
    batch = make_batch(backbone, [TEXT_MISSING, IMAGE_MISSING, TEXT_MISSING], [0, 1, 2], seed=7)
    losses = method.training_loss(batch, 0)
    assert losses["reconstruction"].item() == 0.0
    assert losses["reconstruction_copies"].item() == 0.0


def test_rebq_reconstruction_on_copies_only(backbone):
    method = build_method(backbone, "rebq")
    method.begin_task(0)
    method.train()
    missing = [COMPLETE, TEXT_MISSING, COMPLETE, IMAGE_MISSING, COMPLETE]
    batch = make_batch(backbone, missing, [0, 1, 2, 0, 1], seed=8)
    losses = method.training_loss(batch, 0)
    # Three complete samples, each copied without text and without image.
    assert losses["reconstruction_copies"].item() == 6.0

    complete = torch.tensor([0, 2, 4])
    subset = {name: value[complete] for name, value in batch.inputs.items()}
    text, image = modality_queries(frozen_pass(backbone, batch.inputs, batch.missing))
    no_text = backbone.drop_modality(subset, MissingType.TEXT_MISSING)
    no_image = backbone.drop_modality(subset, MissingType.IMAGE_MISSING)
    _, image_of_copies = modality_queries(frozen_pass(backbone, no_text, torch.full((3,), TEXT_MISSING)))
    text_of_copies, _ = modality_queries(frozen_pass(backbone, no_image, torch.full((3,), IMAGE_MISSING)))
    with torch.no_grad():
        text_error = ((method.text_memory(image_of_copies) - text[complete]) ** 2).mean(dim=1)
        image_error = ((method.image_memory(text_of_copies) - image[complete]) ** 2).mean(dim=1)
    expected = torch.cat([text_error, image_error]).mean()
    assert losses["reconstruction"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_rebq_rebuilds_missing_text_query(backbone):
    method = build_method(backbone, "rebq")
    method.begin_task(0)
    text = torch.randn(3, backbone.hidden_size)
    image = torch.randn(3, backbone.hidden_size)
    missing = torch.tensor([COMPLETE, TEXT_MISSING, IMAGE_MISSING])
    with torch.no_grad():
        rebuilt_text, rebuilt_image = method.rebuilt_queries(text, image, missing)
        assert torch.equal(rebuilt_text[0], text[0])
        assert torch.allclose(rebuilt_text[1], method.text_memory(image[1:2])[0], atol=1e-6)
        assert torch.equal(rebuilt_image[1], image[1])
        assert torch.allclose(rebuilt_image[2], method.image_memory(text[2:3])[0], atol=1e-6)


# Properties every prompt method must have


@pytest.mark.parametrize("name", METHODS)
def test_predictions_ignore_batch_composition(backbone, name):
    method = trained_method(backbone, name)
    missing = [COMPLETE, TEXT_MISSING, IMAGE_MISSING, COMPLETE, TEXT_MISSING, IMAGE_MISSING, COMPLETE]
    batch = make_batch(backbone, missing, [0, 1, 2, 3, 4, 5, 0], seed=9)
    order = torch.tensor([5, 2, 6, 0, 3, 1, 4])
    shuffled = Batch(
        inputs={key: value[order] for key, value in batch.inputs.items()},
        missing=batch.missing[order],
        targets=batch.targets[order],
        sample_ids=[batch.sample_ids[i] for i in order.tolist()],
    )

    with torch.no_grad():
        logits = method.predict(batch, None).logits
        shuffled_logits = method.predict(shuffled, None).logits
    assert logits.shape == (7, 6)
    assert torch.allclose(logits[order], shuffled_logits, atol=1e-5)
    assert torch.equal(logits[order].argmax(dim=1), shuffled_logits.argmax(dim=1))


@pytest.mark.parametrize("name", METHODS)
def test_save_load_same_predictions(backbone, name):
    method = trained_method(backbone, name)
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING, IMAGE_MISSING], [0, 4, 2], seed=10)
    with torch.no_grad():
        expected = method.predict(batch, None).logits
    state = {key: value.clone() for key, value in method.state_dict().items()}

    restored = build_method(build_backbone("vilt-tiny", TEXT_LENGTH, {}), name)
    torch.manual_seed(123)
    restored.begin_task(0)
    restored.begin_task(1)
    restored.load_state_dict(state)
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored.predict(batch, None).logits, expected)


@pytest.mark.parametrize("name", METHODS)
def test_multi_label_loss_is_binary_cross_entropy(backbone, name):
    layout = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=True)
    method = build_method(backbone, name, layout=layout)
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING, IMAGE_MISSING], [0, 0, 0], seed=11)
    batch.targets = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    losses = train_task(method, 0, batch, steps=2)
    assert all(math.isfinite(loss) for loss in losses)

    method.train()
    features, _ = method.encode(batch, 0, training=True)
    logits = method.head.block(0)(features)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.targets[:, :2])
    assert method.training_loss(batch, 0)["classification"].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("name, passes", [("l2p", 2), ("dualprompt", 2), ("coda_prompt", 2), ("map", 1), ("rebq", 2)])
def test_diagnostics_count_backbone_passes(backbone, name, passes):
    method = build_method(backbone, name)
    method.begin_task(0)
    method.eval()
    batch = make_batch(backbone, [COMPLETE, TEXT_MISSING], [0, 1], seed=12)
    with torch.no_grad():
        method.predict(batch, None)
        method.predict(batch, None)
        method.predict(batch, 0)
    diagnostics = method.diagnostics()
    assert diagnostics["backbone_passes_per_prediction_batch"]["task_agnostic"] == passes
    assert diagnostics["prediction_batches"] == {"task_agnostic": 2, "task_aware": 1}

    # Only DualPrompt skips the query pass when the task id picks its E-prompt.
    aware_passes = 1 if name == "dualprompt" else passes
    assert diagnostics["backbone_passes_per_prediction_batch"]["task_aware"] == aware_passes

    method.reset_diagnostics()
    assert method.diagnostics()["prediction_batches"] == {"task_agnostic": 0, "task_aware": 0}


@pytest.mark.parametrize("name", METHODS)
def test_backbone_stays_frozen(backbone, name):
    method = build_method(backbone, name)
    method.begin_task(0)
    assert not any(parameter.requires_grad for parameter in method.backbone.parameters())
    assert method.trainable_parameters()


@pytest.mark.parametrize("kind", [MissingType.TEXT_MISSING, MissingType.IMAGE_MISSING])
def test_vilt_drop_modality_matches_prepare(backbone, tmp_path, kind):
    from PIL import Image

    from cmml_bench.data.types import Sample

    path = tmp_path / "stamp.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(path)
    samples = [Sample("a", path, "a red stamp", ("x",), "train"), Sample("b", path, "another one", ("x",), "train")]

    complete = backbone.prepare(samples, [MissingType.COMPLETE] * 2)
    expected = backbone.prepare(samples, [kind] * 2)
    dropped = backbone.drop_modality(complete, kind)
    for name in expected:
        assert torch.equal(dropped[name], expected[name]), name
