"""Naive LoRA (checked against peft) and task-specific LoRA on the tiny ViLT."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from torch import nn

from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext, LayerState
from cmml_bench.data.types import MissingType, Sample
from cmml_bench.methods import load_method_config
from cmml_bench.methods.base import Batch, TaskLayout
from cmml_bench.methods.lora import Lora
from cmml_bench.methods.lora_task import OTHER_TASK_LOGIT, LoraTask
from cmml_bench.methods.lowrank import TASK_EXTRA, LoRALinear, TaskLoRALinear

LAYOUT = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=False)


def context_state(batch: int, tokens: int, width: int, task=0) -> LayerState:
    """Return a LayerState for adapters that read nothing but the task extra."""
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    context = ForwardContext(missing=torch.zeros(batch, dtype=torch.long), extras={TASK_EXTRA: task})
    return LayerState(0, torch.zeros(batch, tokens, width), mask, mask, mask, context)


class TwoLayers(nn.Module):
    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.proj = base
        self.other = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)


def test_lora_matches_peft():
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    rank, alpha = 4, 12
    ours = LoRALinear(base, rank=rank, alpha=alpha)
    with torch.no_grad():
        ours.lora_b.normal_()

    reference_base = nn.Linear(24, 40)
    reference_base.load_state_dict(base.state_dict())
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    model = get_peft_model(TwoLayers(reference_base), config)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_a)
        layer.lora_B["default"].weight.copy_(ours.lora_b)
    assert layer.scaling["default"] == alpha / rank == ours.scale

    x = torch.randn(3, 7, 24)
    expected = model(x)
    actual = ours(x, context_state(3, 7, 24))
    assert (actual - expected).abs().max() < 1e-6
    assert (actual - base(x)).abs().max() > 1e-2


def test_lora_initialisation():
    torch.manual_seed(0)
    adapter = LoRALinear(nn.Linear(64, 32), rank=8, alpha=16)
    assert torch.equal(adapter.lora_b, torch.zeros(32, 8))
    bound = 1 / math.sqrt(64)
    assert adapter.lora_a.abs().max() <= bound
    assert adapter.lora_a.abs().max() > 0.8 * bound
    assert adapter.scale == 2.0


def test_task_lora_gathers_per_sample():
    torch.manual_seed(0)
    adapter = TaskLoRALinear(nn.Linear(16, 12), rank=2, alpha=4)
    for _ in range(3):
        factors = adapter.add_task()
        with torch.no_grad():
            factors.b.normal_()
    x = torch.randn(4, 5, 16)
    tasks = torch.tensor([2, 0, 1, 2])
    mixed = adapter.delta(x, context_state(4, 5, 16, tasks))
    for row, task in enumerate(tasks.tolist()):
        factors = adapter.tasks[task]
        expected = x[row] @ factors.a.t() @ factors.b.t() * 2.0
        torch.testing.assert_close(mixed[row], expected, atol=1e-6, rtol=1e-6)


def make_batch(folder: Path, backbone, task: int, count: int = 9) -> Batch:
    rng = np.random.default_rng(task)
    low, high = (0, 120) if task == 0 else (150, 255)
    samples, missing = [], []
    for index in range(count):
        path = folder / f"lora_{task}_{index}.png"
        Image.fromarray(rng.integers(low, high, (32, 32, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(f"t{task}s{index}", path, f"item {task} {index}", ("x",), "train"))
        missing.append(MissingType(index % 3))
    start = LAYOUT.class_range(task)[0]
    targets = torch.tensor([start + index % 2 for index in range(count)])
    missing_tensor = torch.tensor([int(kind) for kind in missing])
    return Batch(backbone.prepare(samples, missing), missing_tensor, targets, [s.sample_id for s in samples])


def train(method, batch: Batch, task: int, steps: int = 3) -> None:
    method.begin_task(task)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2, weight_decay=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        method.training_loss(batch, task)["loss"].backward()
        optimizer.step()
    method.end_task(task, [batch])


def build(method_class, name: str):
    torch.manual_seed(0)
    backbone = build_backbone("vilt-tiny", 16, {})
    return method_class(backbone, LAYOUT, load_method_config(name).method)


def test_lora_method_trains_shared_update(tmp_path):
    method = build(Lora, "lora")
    batches = [make_batch(tmp_path, method.backbone, task) for task in range(2)]
    train(method, batches[0], 0)
    lora_b = method.adapters["0_query"].lora_b.detach().clone()
    assert lora_b.abs().sum() > 0

    method.begin_task(1)
    # vilt-tiny: 2 layers x 3 projections x (8x32 + 32x8) LoRA values, two heads of 2 classes on width 32.
    count = sum(parameter.numel() for parameter in method.trainable_parameters())
    assert count == 6 * 512 + 2 * (2 * 32 + 2)
    train(method, batches[1], 1)
    assert not torch.equal(method.adapters["0_query"].lora_b, lora_b)

    agnostic = method.predict(batches[1], None)
    aware = method.predict(batches[1], 1)
    assert agnostic.logits.shape == (9, 4)
    assert agnostic.selected_task is None
    assert torch.equal(aware.logits[:, :2], torch.full((9, 2), OTHER_TASK_LOGIT))
    assert torch.equal(aware.logits[:, 2:], agnostic.logits[:, 2:])


def test_lora_task_freezes_earlier_tasks(tmp_path):
    method = build(LoraTask, "lora_task")
    batches = [make_batch(tmp_path, method.backbone, task) for task in range(2)]
    train(method, batches[0], 0)
    before = {name: tensor.clone() for name, tensor in method.state_dict().items()}
    train(method, batches[1], 1)

    after = method.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert all(".tasks.0." not in name and not name.startswith("heads.heads.0.") for name in changed), changed
    new_task = [name for name in after if ".tasks.1." in name]
    assert new_task and any(not torch.equal(after[name], before.get(name, after[name] + 1)) for name in new_task)


def test_lora_task_prediction_routes_per_sample(tmp_path):
    method = build(LoraTask, "lora_task")
    batches = [make_batch(tmp_path, method.backbone, task) for task in range(2)]
    for task in range(2):
        train(method, batches[task], task)

    both = Batch(
        {name: torch.cat([b.inputs[name] for b in batches]) for name in batches[0].inputs},
        torch.cat([b.missing for b in batches]),
        torch.cat([b.targets for b in batches]),
        batches[0].sample_ids + batches[1].sample_ids,
    )
    prediction = method.predict(both, None)
    selected = prediction.selected_task
    assert set(selected.tolist()) == {0, 1}
    for row, task in enumerate(selected.tolist()):
        start, stop = LAYOUT.class_range(task)
        outside = torch.cat([prediction.logits[row, :start], prediction.logits[row, stop:]])
        assert torch.equal(outside, torch.full_like(outside, OTHER_TASK_LOGIT))

    for row in (0, 12):
        single = method.predict(Batch({n: t[row : row + 1] for n, t in both.inputs.items()}, both.missing[row : row + 1], both.targets[row : row + 1], [both.sample_ids[row]]), None)
        assert int(single.selected_task[0]) == int(selected[row])
        torch.testing.assert_close(single.logits[0], prediction.logits[row], atol=1e-5, rtol=0)

    aware = method.predict(batches[0], 0)
    assert aware.selected_task is None
    assert torch.equal(aware.logits[:, 2:], torch.full((9, 2), OTHER_TASK_LOGIT))


def test_lora_task_update_rank(tmp_path):
    adapter = TaskLoRALinear(nn.Linear(32, 32), rank=4, alpha=8)
    factors = adapter.add_task()
    with torch.no_grad():
        factors.b.normal_()
    matrix = adapter.delta(torch.eye(32).unsqueeze(0), context_state(1, 32, 32))[0]
    assert int(torch.linalg.matrix_rank(matrix)) == 4


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown lora option"):
        Lora(build_backbone("vilt-tiny", 16, {}), LAYOUT, {"rnak": 4})
    with pytest.raises(ValueError, match="unknown lora_task option"):
        LoraTask(build_backbone("vilt-tiny", 16, {}), LAYOUT, {"rnak": 4})
