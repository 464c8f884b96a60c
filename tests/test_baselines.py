"""The baselines: finetune, linear_probe and joint, on the tiny ViLT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmml_bench.backbones import build_backbone
from cmml_bench.backbones.base import ForwardContext
from cmml_bench.engine.runner import RunRequest, run_one
from cmml_bench.methods import load_method_config, method_class
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, TaskLayout
from cmml_bench.methods.heads import ExpandableHead
from run_fixtures import write_manifest_dataset, write_protocol

LAYOUT = TaskLayout(task_classes=((0, 1), (2, 3, 4), (5,)), multi_label=False)
FAST = ["train.epochs=1", "train.batch_size=8", "train.lr=0.01", "backbone.config.initializer_range=0.2"]


def build(key: str, options: dict | None = None):
    backbone = build_backbone("vilt-tiny", 8, {"config": {"initializer_range": 0.2}})
    return method_class(key)(backbone, LAYOUT, options or {})


def trainable_names(method) -> set[str]:
    return {name for name, parameter in method.named_parameters() if parameter.requires_grad}


def random_batch(size: int = 4) -> Batch:
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1000, 2000, (size, 8), generator=generator),
        "text_attention_mask": torch.ones(size, 8, dtype=torch.bool),
        "pixel_values": torch.randn(size, 3, 32, 32, generator=generator),
    }
    return Batch(inputs=inputs, missing=torch.zeros(size, dtype=torch.long), targets=torch.tensor([2, 3, 4, 2][:size]), sample_ids=[str(i) for i in range(size)])


def test_expandable_head_keeps_old_rows():
    head = ExpandableHead(5, LAYOUT)
    head.grow(0)
    first = head.block(0).weight.detach().clone()
    head.grow(2)

    assert [block.out_features for block in head.blocks] == [2, 3, 1]
    assert head.num_classes == 6
    assert torch.equal(head.block(0).weight, first)
    assert head(torch.zeros(7, 5)).shape == (7, 6)


def test_finetune_trains_backbone_and_head():
    method = build("finetune")
    method.begin_task(0)
    method.begin_task(1)
    names = trainable_names(method)
    total = {name for name, _ in method.named_parameters()}

    assert names == total
    assert method.head.num_classes == 5
    assert method.predict(random_batch(), None).logits.shape == (4, 5)
    assert method.uses_task_id_at_test is False


def test_finetune_head_only_option():
    method = build("finetune", {"train_backbone": False})
    method.begin_task(0)

    assert trainable_names(method) == {"head.blocks.0.weight", "head.blocks.0.bias"}


def test_linear_probe_freezes_backbone():
    method = build("linear_probe")
    method.begin_task(0)
    method.begin_task(1)

    assert trainable_names(method) == {
        "shared_head.blocks.0.weight", "shared_head.blocks.0.bias",
        "shared_head.blocks.1.weight", "shared_head.blocks.1.bias",
        "task_heads.1.weight", "task_heads.1.bias",
    }


def test_linear_probe_task_aware_uses_task_head():
    method = build("linear_probe")
    for task in range(2):
        method.begin_task(task)
    batch = random_batch()
    features = method.backbone.frozen_features(batch.inputs, batch.missing)

    logits = method.predict(batch, 1).logits

    assert logits.shape == (4, 5)
    assert torch.isinf(logits[:, :2]).all()
    assert torch.allclose(logits[:, 2:5], method.task_heads[1](features))
    assert torch.allclose(method.predict(batch, None).logits, method.shared_head(features))


def test_linear_probe_loss_sums_both_heads():
    method = build("linear_probe")
    method.begin_task(0)
    method.begin_task(1)
    batch = random_batch()

    parts = method.training_loss(batch, 1)

    assert parts["loss"].item() == pytest.approx(parts["shared_loss"].item() + parts["task_loss"].item(), rel=1e-6)
    # The task head receives targets 2, 3, 4 as positions 0, 1, 2 of its own three classes.
    own = torch.nn.functional.cross_entropy(
        method.task_heads[1](method.backbone.frozen_features(batch.inputs, batch.missing)), torch.tensor([0, 1, 2, 0])
    )
    assert parts["task_loss"].item() == pytest.approx(own.item(), rel=1e-6)


def test_joint_restarts_from_initial_weights():
    method = build("joint")
    method.begin_task(0)
    weight = method.backbone.layers[0].query.weight
    initial = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)

    method.begin_task(1)

    assert torch.equal(method.backbone.layers[0].query.weight, initial)
    assert method.head.num_classes == 5
    assert method.trains_on_all_seen_tasks is True


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("colours")
    return write_protocol(folder / "colours.yaml", write_manifest_dataset(folder / "data"))


def test_joint_trains_on_seen_union(colours, tmp_path):
    request = RunRequest(method="joint", protocol=str(colours), out=tmp_path, overrides=FAST, quiet=True)
    folder = run_one(request).folder
    log = (folder / "run.log").read_text()

    # Each task has 2 classes x 6 training samples.
    for task, count in ((1, 12), (2, 24), (3, 36)):
        assert f"task {task}/3: {count} training samples" in log


def test_linear_probe_run_keeps_backbone(colours, tmp_path):
    request = RunRequest(method="linear_probe", protocol=str(colours), out=tmp_path, overrides=FAST, quiet=True)
    folder = run_one(request).folder
    result = json.loads((folder / "result.json").read_text())

    # Heads of 32 inputs: shared blocks 2 x 33 per task, plus one task head of 2 x 33.
    assert result["trainable_parameters"]["per_task"] == [132, 198, 264]
    assert result["trainable_parameters"]["total"] == 6 * 33 + 6 * 33
    # The frozen backbone gives each task's test split the same score in every later row.
    aware = result["matrix"][TASK_AWARE]
    assert aware[0][0] == aware[1][0] == aware[2][0]
    assert aware[1][1] == aware[2][1]
    assert result["eval_settings"] == [TASK_AGNOSTIC, TASK_AWARE]


@pytest.mark.parametrize("name", ["finetune", "linear_probe", "joint"])
def test_method_yaml_loads(name):
    config = load_method_config(name)

    assert config.implementation == name
    assert config.description
    assert method_class(name).key == name


def test_linear_probe_caches_features():
    method = build("linear_probe")
    method.begin_task(0)
    method.train()
    batch = random_batch()
    first = method.features(batch)
    with torch.no_grad():
        method.backbone.layers[0].query.weight.add_(1.0)

    again = method.features(batch)

    assert method.backbone.training is False
    assert method.shared_head.training is True
    assert len(method._feature_cache) == 4
    assert torch.equal(again, first)
