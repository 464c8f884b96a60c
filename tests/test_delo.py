"""DeLo on the tiny ViLT: rank, routing, task partitioning, batch independence, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext, LayerState
from cmml_bench.data.types import MissingType, Sample
from cmml_bench.methods import load_method_config
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.delo import TEXT, VISION, Delo, remove_text, routing_signals
from cmml_bench.methods.lora_task import OTHER_TASK_LOGIT, TaskHeads
from cmml_bench.methods.lowrank import TASK_EXTRA
from cmml_bench.methods.task_keys import TaskKeyMemory

TEXT_LENGTH = 16
LAYOUT = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=False)
TASK_WORDS = (("cat", "dog", "bird"), ("car", "train", "boat"))


def make_samples(folder: Path, task: int, count: int) -> list[Sample]:
    """Write ``count`` 32x32 images; task 0 is dark and task 1 bright, so task keys can tell them apart."""
    rng = np.random.default_rng(task * 100 + count)
    low, high = (0, 120) if task == 0 else (150, 255)
    samples = []
    for index in range(count):
        path = folder / f"task{task}_{index}.png"
        Image.fromarray(rng.integers(low, high, (32, 32, 3), dtype=np.uint8)).save(path)
        word = TASK_WORDS[task][index % 3]
        samples.append(Sample(f"t{task}s{index}", path, f"a {word} number {index}", (word,), "train"))
    return samples


def make_batch(backbone, samples: list[Sample], task: int) -> Batch:
    missing = [MissingType(index % 3) for index in range(len(samples))]
    start = LAYOUT.class_range(task)[0]
    targets = torch.tensor([start + index % 2 for index in range(len(samples))])
    inputs = backbone.prepare(samples, missing)
    return Batch(inputs, torch.tensor([int(kind) for kind in missing]), targets, [s.sample_id for s in samples])


def subset(batch: Batch, rows: torch.Tensor | list[int]) -> Batch:
    rows = torch.as_tensor(rows)
    inputs = {name: tensor[rows] for name, tensor in batch.inputs.items()}
    return Batch(inputs, batch.missing[rows], batch.targets[rows], [batch.sample_ids[int(i)] for i in rows])


def build_delo(options: dict | None = None) -> Delo:
    torch.manual_seed(0)
    backbone = build_backbone("vilt-tiny", TEXT_LENGTH, {})
    return Delo(backbone, LAYOUT, {**load_method_config("delo").method, **(options or {})})


def train_task(method: Delo, batch: Batch, task: int, steps: int = 3) -> None:
    method.begin_task(task)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2, weight_decay=0.5)
    for _ in range(steps):
        loss = method.training_loss(batch, task)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.end_task(task, [batch])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("delo_images")
    return [make_samples(folder, task, 9) for task in range(2)]


@pytest.fixture(scope="module")
def trained(data):
    """A DeLo trained for a few steps on two tasks, with both tasks' batches."""
    method = build_delo()
    batches = [make_batch(method.backbone, data[task], task) for task in range(2)]
    for task in range(2):
        train_task(method, batches[task], task)
    return method, batches


def layer_state(method: Delo, batch: Batch) -> LayerState:
    """Return the LayerState that layer 0 receives for ``batch``."""
    sequence = method.backbone.embed(batch.inputs)
    layer = method.backbone.layers[0]
    return LayerState(
        layer=0,
        hidden=layer.attention_input(sequence.embeddings),
        attention_mask=sequence.attention_mask,
        text_mask=sequence.text_mask,
        image_mask=sequence.image_mask,
        context=ForwardContext(missing=batch.missing, extras={TASK_EXTRA: 0}),
    )


def test_update_rank_per_pool_is_r(data):
    method = build_delo()
    batch = subset(make_batch(method.backbone, data[0], 0), [0])
    method.begin_task(0)
    rank = method.delo.rank
    for adapter in method.delo_adapters:
        pools = adapter.tasks[0]
        with torch.no_grad():
            pools.b.normal_()
        full_b = pools.b.detach().clone()
        identity = torch.eye(adapter.in_features).unsqueeze(0)

        total = adapter.delta(identity, layer_state(method, batch))[0]
        assert int(torch.linalg.matrix_rank(total)) <= 2 * rank

        for pool in (VISION, TEXT):
            with torch.no_grad():
                pools.b.zero_()
                pools.b[pool] = full_b[pool]
            update = adapter.delta(identity, layer_state(method, batch))[0]
            assert int(torch.linalg.matrix_rank(update)) == rank
        with torch.no_grad():
            pools.b.copy_(full_b)


def test_delta_is_linear_in_tokens(data):
    method = build_delo()
    batch = subset(make_batch(method.backbone, data[0], 0), [0])
    method.begin_task(0)
    adapter = method.delo_adapters[0]
    with torch.no_grad():
        adapter.tasks[0].b.normal_()
    state = layer_state(method, batch)
    matrix = adapter.delta(torch.eye(adapter.in_features).unsqueeze(0), state)[0]
    tokens = torch.randn(1, 5, adapter.in_features)
    torch.testing.assert_close(adapter.delta(tokens, state), tokens @ matrix, atol=1e-5, rtol=1e-5)


def test_every_router_gets_gradient(data):
    method = build_delo()
    batch = make_batch(method.backbone, data[0], 0)
    method.begin_task(0)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        method.training_loss(batch, 0)["loss"].backward()
        optimizer.step()

    # The output side starts at zero, so routers get gradient from the second step on.
    for name, adapter in method.adapters.items():
        pools = adapter.tasks[0]
        for pool in (VISION, TEXT):
            for side in (0, 1):
                assert pools.router.grad[pool, side].abs().sum() > 0, f"{name} pool {pool} side {side}"
                assert pools.router_bias.grad[pool, side].abs().sum() > 0, f"{name} pool {pool} side {side}"


def test_first_task_bit_identical_after_second(data):
    method = build_delo()
    batches = [make_batch(method.backbone, data[task], task) for task in range(2)]
    train_task(method, batches[0], 0)
    before = {name: tensor.clone() for name, tensor in method.state_dict().items()}
    task0 = [parameter for module in method.task_modules(0) for parameter in module.parameters()]

    method.begin_task(1)
    trainable = {id(parameter) for parameter in method.trainable_parameters()}
    assert not any(id(parameter) in trainable for parameter in task0)
    assert all(parameter.requires_grad for module in method.task_modules(1) for parameter in module.parameters())
    train_task(method, batches[1], 1)

    after = method.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "task 1 training changed nothing"
    assert all(".tasks.0." not in name and not name.startswith("heads.heads.0.") for name in changed), changed
    assert any(".tasks.1." in name for name in after if name not in before)


def test_predictions_do_not_depend_on_batch(trained):
    method, batches = trained
    everything = Batch(
        {name: torch.cat([b.inputs[name] for b in batches]) for name in batches[0].inputs},
        torch.cat([b.missing for b in batches]),
        torch.cat([b.targets for b in batches]),
        batches[0].sample_ids + batches[1].sample_ids,
    )
    reference = method.predict(everything, None)
    assert set(reference.selected_task.tolist()) == {0, 1}

    order = torch.randperm(everything.size, generator=torch.Generator().manual_seed(3))
    shuffled = method.predict(subset(everything, order), None)
    restored = torch.empty_like(order)
    restored[order] = torch.arange(order.numel())
    assert torch.equal(shuffled.selected_task[restored], reference.selected_task)
    assert torch.equal(shuffled.logits[restored].argmax(1), reference.logits.argmax(1))
    torch.testing.assert_close(shuffled.logits[restored], reference.logits, atol=1e-5, rtol=0)

    for row in (0, 10, 17):
        single = method.predict(subset(everything, [row]), None)
        assert int(single.selected_task[0]) == int(reference.selected_task[row])
        torch.testing.assert_close(single.logits[0], reference.logits[row], atol=1e-5, rtol=0)


def test_task_ids_come_from_task_keys(trained):
    method, batches = trained
    batch = batches[1]
    assert not hasattr(batch, "task")
    seen_tasks = []
    original = method.encode

    def recording_encode(batch, task, extras=None):
        seen_tasks.append(task)
        return original(batch, task, extras)

    method.encode = recording_encode
    try:
        prediction = method.predict(batch, None)
        relabelled = Batch(batch.inputs, batch.missing, torch.zeros_like(batch.targets), batch.sample_ids)
        again = method.predict(relabelled, None)
    finally:
        del method.encode

    features = method.backbone.frozen_features(batch.inputs, batch.missing)
    expected = method.task_keys.select(features, batch.missing, last_task=1)
    assert torch.equal(prediction.selected_task, expected)
    assert torch.equal(seen_tasks[0], expected)
    assert torch.equal(again.logits, prediction.logits)


def test_oracle_task_id_only_task_aware(data):
    default = build_delo()
    assert default.settings == (TASK_AGNOSTIC, TASK_AWARE)
    oracle = build_delo({"oracle_task_id": True})
    assert oracle.settings == (TASK_AWARE,)
    assert oracle.uses_task_id_at_test is True
    assert Delo.settings == (TASK_AGNOSTIC, TASK_AWARE)

    batch = make_batch(oracle.backbone, data[0], 0)
    oracle.begin_task(0)
    oracle.end_task(0, [batch])
    with pytest.raises(ValueError, match="task_aware"):
        oracle.predict(batch, None)
    assert oracle.predict(batch, 0).selected_task is None


def test_cross_modal_routing_uses_present_signal(data):
    method = build_delo()
    batch = subset(make_batch(method.backbone, data[0], 0), [0, 1, 2])
    assert batch.missing.tolist() == [0, 1, 2]
    method.begin_task(0)
    state = layer_state(method, batch)
    raw, routed = routing_signals(state, cross_modal=True)

    assert torch.equal(routed[0], raw[0])
    assert torch.equal(routed[1, TEXT], raw[1, VISION])
    assert torch.equal(routed[1, VISION], raw[1, VISION])
    assert torch.equal(routed[2, VISION], raw[2, TEXT])
    assert torch.equal(routed[2, TEXT], raw[2, TEXT])
    assert not torch.equal(raw[1, TEXT], raw[1, VISION])

    # The text routers of the text-missing sample score the vision signal, and the reverse.
    adapter = method.delo_adapters[0]
    pools = adapter.tasks[0]
    routing = adapter.route(routed, 0)
    rank = method.delo.rank
    for side in (0, 1):
        text_scores = pools.router[TEXT, side] @ raw[1, VISION] + pools.router_bias[TEXT, side]
        assert torch.equal(routing.index[1, TEXT, side], text_scores.topk(rank).indices)
        vision_scores = pools.router[VISION, side] @ raw[2, TEXT] + pools.router_bias[VISION, side]
        assert torch.equal(routing.index[2, VISION, side], vision_scores.topk(rank).indices)


def test_no_cross_modal_routing_keeps_own_signal(data):
    method = build_delo({"cross_modal_routing": False})
    batch = subset(make_batch(method.backbone, data[0], 0), [1, 2])
    raw, routed = routing_signals(layer_state(method, batch), cross_modal=False)
    assert torch.equal(raw, routed)


def test_per_sample_gather_matches_single_task(trained):
    method, batches = trained
    batch = batches[0]
    state = layer_state(method, batch)
    adapter = method.delo_adapters[2]
    tokens = torch.randn(batch.size, 4, adapter.in_features)
    mixed = torch.tensor([index % 2 for index in range(batch.size)])

    state.context.extras[TASK_EXTRA] = mixed
    gathered = adapter.delta(tokens, state)
    for task in range(2):
        state.context.extras[TASK_EXTRA] = task
        alone = adapter.delta(tokens, state)
        rows = mixed == task
        torch.testing.assert_close(gathered[rows], alone[rows], atol=1e-6, rtol=1e-6)


def test_save_load_gives_same_predictions(trained):
    method, batches = trained
    saved = {name: tensor.clone() for name, tensor in method.state_dict().items()}
    fresh = build_delo()
    for task in range(2):
        fresh.begin_task(task)
    fresh.load_state_dict(saved)

    for batch in batches:
        expected = method.predict(batch, None)
        actual = fresh.predict(batch, None)
        assert torch.equal(actual.logits, expected.logits)
        assert torch.equal(actual.selected_task, expected.selected_task)


def test_remove_text_equals_empty_text(data):
    method = build_delo()
    backbone = method.backbone
    samples = data[0][:3]
    complete = backbone.prepare(samples, [MissingType.COMPLETE] * 3)
    empty = backbone.prepare(samples, [MissingType.TEXT_MISSING] * 3)
    missing = torch.full((3,), int(MissingType.TEXT_MISSING))
    context = ForwardContext(missing=missing, adapters_enabled=False)
    expected = backbone(empty, context).pooled
    actual = backbone(remove_text(complete), context).pooled
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_training_loss_parts(trained):
    method, batches = trained
    parts = method.training_loss(batches[1], 1)
    assert set(parts) == {"loss", "classification", "alignment", "consistency"}
    combined = parts["classification"] + 0.1 * parts["alignment"] + 0.1 * parts["consistency"]
    torch.testing.assert_close(parts["loss"].detach(), combined)
    assert float(parts["consistency"]) >= 0
    assert 0 < float(parts["alignment"]) < 2


def test_consistency_matches_separate_pass(trained):
    method, batches = trained
    batch = batches[1]
    complete = torch.nonzero(batch.missing == int(MissingType.COMPLETE)).flatten()
    assert complete.numel() == 3

    full = method.heads[1](method.encode(batch, 1).pooled)[complete]
    no_text = remove_text({name: tensor[complete] for name, tensor in batch.inputs.items()})
    missing = torch.full((3,), int(MissingType.TEXT_MISSING))
    student = method.heads[1](method.backbone(no_text, ForwardContext(missing=missing, extras={TASK_EXTRA: 1})).pooled)
    p = torch.softmax(full, dim=-1)
    expected = (p * (torch.log_softmax(full, dim=-1) - torch.log_softmax(student, dim=-1))).sum(-1).mean()

    parts = method.training_loss(batch, 1)
    torch.testing.assert_close(parts["consistency"], expected.detach(), atol=1e-6, rtol=1e-4)
    assert float(expected) > 0


def test_shared_pool_and_hard_gates(data):
    method = build_delo({"shared_pool": True, "gates": False})
    batch = make_batch(method.backbone, data[0], 0)
    method.begin_task(0)
    adapter = method.delo_adapters[0]
    assert adapter.tasks[0].a.shape == (1, 16, 32)
    _, routed = routing_signals(layer_state(method, batch), cross_modal=True)
    routing = adapter.route(routed, 0)
    assert torch.equal(routing.gates, torch.ones(batch.size, 2, 4))
    assert torch.isfinite(method.training_loss(batch, 0)["loss"])


def test_invalid_options_rejected():
    with pytest.raises(ValueError, match="unknown delo option"):
        build_delo({"pool_size": 3})
    with pytest.raises(ValueError, match="true or false"):
        build_delo({"gates": "false"})
    with pytest.raises(ValueError, match="rank 20"):
        build_delo({"rank": 20})


def test_selection_counts_add_up(trained):
    method, batches = trained
    method.reset_diagnostics()
    method.predict(batches[0], None)
    counts = method.diagnostics()["factor_selection_counts"]
    layer_counts = [counts[task]["0.query"]["vision"]["input"] for task in counts]
    # Each sample chooses r input factors in the vision pool of its task.
    assert sum(sum(row) for row in layer_counts) == batches[0].size * method.delo.rank
    method.reset_diagnostics()
    assert all(int(adapter.selection_counts.sum()) == 0 for adapter in method.delo_adapters)


def test_routed_logits_layout():
    heads = TaskHeads(3, TaskLayout(((0, 1), (2, 3, 4)), multi_label=False))
    for task in range(2):
        heads.add_task(task)
    features = torch.randn(2, 3)
    logits = heads.routed_logits(features, torch.tensor([1, 0]), last_task=1)
    full = heads.seen_logits(features, last_task=1)
    assert torch.equal(logits[0, :2], torch.full((2,), OTHER_TASK_LOGIT))
    assert torch.equal(logits[0, 2:], full[0, 2:])
    assert torch.equal(logits[1, :2], full[1, :2])
    assert torch.equal(logits[1, 2:], torch.full((3,), OTHER_TASK_LOGIT))


def test_task_keys_per_missing_type():
    memory = TaskKeyMemory(num_tasks=2, dim=2, per_missing_type=True)
    complete, text_missing = int(MissingType.COMPLETE), int(MissingType.TEXT_MISSING)
    # Task 0: complete samples along x, text-missing along y. Task 1: all along (1, 1).
    memory.add(0, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([complete, text_missing]))
    memory.add(1, torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([complete, text_missing]))
    query = torch.tensor([[0.1, 1.0]])
    missing = torch.tensor([text_missing])

    # The overall key of task 0 is (1, 1)/sqrt 2 like task 1's, so only the typed key separates them.
    assert memory.select(query, missing, last_task=1).tolist() == [0]
    similarity = memory.similarities(query, missing, torch.tensor([0, 1]))
    torch.testing.assert_close(similarity[0, 0], torch.tensor(1.0 / (1.01**0.5)))
    torch.testing.assert_close(similarity[0, 1], torch.tensor(1.1 / (2 * 1.01) ** 0.5))

    image_missing = torch.tensor([int(MissingType.IMAGE_MISSING)])
    # No image-missing sample in either task: both fall back to their overall key, which tie, so task 0 wins.
    fallback = memory.similarities(query, image_missing, torch.tensor([0, 1]))
    torch.testing.assert_close(fallback[0, 0], fallback[0, 1])


def test_task_keys_require_a_key():
    memory = TaskKeyMemory(num_tasks=2, dim=2)
    with pytest.raises(RuntimeError, match="no task key"):
        memory.select(torch.ones(1, 2), torch.zeros(1, dtype=torch.long), last_task=1)


def test_multi_label_training_and_prediction(data):
    layout = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=True)
    torch.manual_seed(0)
    backbone = build_backbone("vilt-tiny", TEXT_LENGTH, {})
    method = Delo(backbone, layout, load_method_config("delo").method)
    batch = make_batch(backbone, data[0], 0)
    targets = torch.zeros(batch.size, 4)
    targets[:, 0] = 1.0
    targets[::2, 1] = 1.0
    targets[::3, 2] = 1.0  # a later task's label, which task 0's loss must ignore
    batch = Batch(batch.inputs, batch.missing, targets, batch.sample_ids)

    train_task(method, batch, 0)
    parts = method.training_loss(batch, 0)
    assert torch.isfinite(parts["loss"])
    assert float(parts["consistency"]) >= 0

    probabilities = torch.sigmoid(method.predict(batch, None).logits)
    assert probabilities.shape == (batch.size, 2)
    assert bool((probabilities > 0).all())
