"""The runner: run folder, resume, determinism, config checks and evaluation arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cmml_bench.data.errors import DataError
from cmml_bench.engine.config import ConfigError, apply_overrides
from cmml_bench.engine.evaluation import missing_breakdown, predict_task_split, score, task_identification
from cmml_bench.engine.runner import RunRequest, run_one
from cmml_bench.engine.training import warmup_cosine
from cmml_bench.methods import load_method_config
from cmml_bench.methods.base import TASK_AGNOSTIC, TASK_AWARE, Batch, Method, Prediction, TaskLayout
from run_fixtures import TEST_PER_CLASS, write_manifest_dataset, write_protocol

FAST = ["train.epochs=1", "train.batch_size=8", "train.lr=0.01", "backbone.config.initializer_range=0.2"]
RESULT_KEYS = {
    "schema_version", "protocol", "method", "backbone", "seed", "status", "tasks_completed", "num_tasks",
    "multi_label", "score_name", "eval_settings", "matrix", "metrics", "missing_breakdown",
    "uses_task_id_at_test", "trainable_parameters", "total_parameters", "timing", "identity",
    "skipped_samples", "task_identification", "config",
}
RUN_FILES = {
    "result.json", "config.yaml", "environment.json", "class_order.json", "missing_counts.json",
    "predictions.csv", "diagnostics.json", "run.log", "checkpoints",
}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("colours")
    data = write_manifest_dataset(folder / "data")
    return write_protocol(folder / "colours.yaml", data)


@pytest.fixture(scope="module")
def finetune_run(colours, tmp_path_factory) -> Path:
    """The folder of one complete, uninterrupted finetune run on the colours protocol."""
    return run_one(request(colours, tmp_path_factory.mktemp("straight"))).folder


def request(protocol: Path, out: Path, method: str = "finetune", **changes) -> RunRequest:
    settings = dict(method=method, protocol=str(protocol), out=out, overrides=list(FAST), quiet=True)
    settings.update(changes)
    return RunRequest(**settings)


def test_resume_after_stop_matches_uninterrupted(colours, finetune_run, tmp_path):
    stopped = run_one(request(colours, tmp_path / "resumed", stop_after=2))
    partial = json.loads((stopped.folder / "result.json").read_text())
    resumed = run_one(request(colours, tmp_path / "resumed"))

    assert stopped.status == "incomplete"
    assert partial["tasks_completed"] == 2
    assert partial["matrix"]["task_agnostic"][2] == [None, None, None]
    assert resumed.status == "complete"
    final_straight = json.loads((finetune_run / "result.json").read_text())
    final_resumed = json.loads((resumed.folder / "result.json").read_text())
    assert final_resumed["matrix"] == final_straight["matrix"]
    assert final_resumed["trainable_parameters"] == final_straight["trainable_parameters"]
    predictions = (resumed.folder / "predictions.csv").read_bytes()
    assert predictions == (finetune_run / "predictions.csv").read_bytes()
    assert "resuming after task 2 of 3" in (resumed.folder / "run.log").read_text()


def test_run_folder_files_and_schema(finetune_run):
    folder = finetune_run
    result = json.loads((folder / "result.json").read_text())

    assert folder.parts[-3:] == ("colours", "finetune", "seed0")
    assert {path.name for path in folder.iterdir()} == RUN_FILES
    assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == ["progress.json", "state-task2.safetensors"]
    assert set(result) == RESULT_KEYS
    assert result["status"] == "complete"
    assert result["eval_settings"] == [TASK_AGNOSTIC, TASK_AWARE]
    assert result["uses_task_id_at_test"] is True
    assert result["score_name"] == "accuracy"
    matrix = result["matrix"][TASK_AGNOSTIC]
    assert [[value is None for value in row] for row in matrix] == [
        [False, True, True], [False, False, True], [False, False, False]
    ]
    assert len(result["timing"]["train_seconds"]) == 3
    assert result["timing"]["peak_memory_kind"] == "cpu_max_rss"
    assert result["config"]["train"]["epochs"] == 1


def test_task_key_accuracy_in_result(colours, finetune_run, tmp_path):
    plain = json.loads((finetune_run / "result.json").read_text())
    assert plain["task_identification"] is None

    folder = run_one(request(colours, tmp_path, method="lora_task")).folder
    result = json.loads((folder / "result.json").read_text())
    diagnostics = json.loads((folder / "diagnostics.json").read_text())
    identification = result["task_identification"]

    assert identification == diagnostics["task_identification"]
    assert identification["setting"] == TASK_AGNOSTIC
    assert identification["overall"]["samples"] == 3 * 2 * TEST_PER_CLASS
    assert sum(group["samples"] for group in identification["per_task"].values()) == identification["overall"]["samples"]


def test_predictions_cover_every_test_sample(finetune_run):
    folder = finetune_run
    lines = (folder / "predictions.csv").read_text().splitlines()
    counts = json.loads((folder / "missing_counts.json").read_text())

    assert lines[0] == "setting,task,sample_id,missing_type,label,prediction"
    # 2 settings x 3 tasks x 2 classes x TEST_PER_CLASS samples.
    assert len(lines) - 1 == 2 * 3 * 2 * TEST_PER_CLASS
    assert [task["splits"]["test"]["samples"] for task in counts] == [6, 6, 6]
    # A 50% mix of 6 samples: 3 lose a modality, floor(0.5 * 3) = 1 of them the image.
    assert [task["splits"]["test"]["image_missing"] for task in counts] == [1, 1, 1]


def test_breakdown_matches_predictions(finetune_run):
    folder = finetune_run
    result = json.loads((folder / "result.json").read_text())
    rows = [line.split(",") for line in (folder / "predictions.csv").read_text().splitlines()[1:]]

    for setting in (TASK_AGNOSTIC, TASK_AWARE):
        for kind in ("complete", "text_missing", "image_missing"):
            group = [row for row in rows if row[0] == setting and row[3] == kind]
            expected = 100.0 * sum(row[4] == row[5] for row in group) / len(group)
            assert result["missing_breakdown"][setting][kind] == pytest.approx(expected)


def test_changed_config_names_the_key(colours, tmp_path):
    run_one(request(colours, tmp_path, stop_after=1))
    changed = request(colours, tmp_path, overrides=[*FAST, "train.epochs=2"])

    with pytest.raises(ConfigError, match=r"method\.train\.epochs is 1 there but 2 now"):
        run_one(changed)


def test_complete_run_is_not_rerun(colours, tmp_path):
    first = run_one(request(colours, tmp_path, method="linear_probe"))
    before = (first.folder / "result.json").stat().st_mtime_ns

    again = run_one(request(colours, tmp_path, method="linear_probe"))

    assert again.status == "complete"
    assert (first.folder / "result.json").stat().st_mtime_ns == before


def test_frozen_backbone_left_out_of_checkpoint(colours, tmp_path):
    folder = run_one(request(colours, tmp_path, method="linear_probe", stop_after=1)).folder
    tensors = load_file(str(folder / "checkpoints" / "state-task0.safetensors"))
    parameters = [name for name in tensors if not name.startswith("backbone.")]

    # Task 0 of the probe: the shared head block and task head 0, weight and bias each.
    assert sorted(parameters) == [
        "shared_head.blocks.0.bias", "shared_head.blocks.0.weight", "task_heads.0.bias", "task_heads.0.weight"
    ]
    assert all(tensor.numel() < 1000 for name, tensor in tensors.items() if name.startswith("backbone."))


def test_absent_data_fails_before_building(tmp_path):
    protocol = write_protocol(tmp_path / "nodata.yaml", tmp_path / "absent")

    with pytest.raises(DataError, match="not found"):
        run_one(request(protocol, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_multi_label_run_scores_macro_f1(tmp_path):
    data = write_manifest_dataset(tmp_path / "data", multi_label=True)
    protocol = write_protocol(tmp_path / "tags.yaml", data, multi_label=True)

    folder = run_one(request(protocol, tmp_path / "out", method="linear_probe", stop_after=2)).folder
    result = json.loads((folder / "result.json").read_text())

    assert result["score_name"] == "macro_f1"
    assert result["multi_label"] is True
    row = result["matrix"][TASK_AGNOSTIC][1]
    assert all(0.0 <= value <= 100.0 for value in row[:2])


def test_overrides_parse_yaml_values():
    config = load_method_config("finetune")
    settings = apply_overrides(
        config, ["train.lr=2e-3", "method.train_backbone=false", "backbone.config.hidden_size=16", "train.betas=[0.8, 0.9]"]
    )

    assert settings.method.train["lr"] == 0.002
    assert settings.method.method["train_backbone"] is False
    assert settings.backbone_options == {"config": {"hidden_size": 16}}
    assert settings.method.train["betas"] == [0.8, 0.9]
    assert config.train["lr"] == 1.0e-4


def test_overrides_reject_unknown_section():
    config = load_method_config("finetune")

    with pytest.raises(ConfigError, match="unknown --set section 'optim'"):
        apply_overrides(config, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(config, ["train.lr"])


def test_overrides_reject_misspelled_keys():
    config = load_method_config("finetune")

    with pytest.raises(ConfigError, match="unknown --set key 'train.epoch'.*epochs"):
        apply_overrides(config, ["train.epoch=1"])
    with pytest.raises(ConfigError, match="unknown --set key 'eval.batchsize'"):
        apply_overrides(config, ["eval.batchsize=8"])
    with pytest.raises(ConfigError, match="unknown method option 'rank'.*train_backbone"):
        apply_overrides(config, ["method.rank=4"])


def test_overrides_reject_wrong_types():
    config = load_method_config("finetune")

    with pytest.raises(ConfigError, match="train.epochs must be int, got 'abc'"):
        apply_overrides(config, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="train.epochs must be at least 1"):
        apply_overrides(config, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="train.lr must be int or float, got True"):
        apply_overrides(config, ["train.lr=true"])


def test_override_types_cover_defaults():
    from cmml_bench.engine.config import EVAL_TYPES, TRAIN_TYPES
    from cmml_bench.methods import EVAL_DEFAULTS, TRAIN_DEFAULTS

    assert set(TRAIN_DEFAULTS) <= set(TRAIN_TYPES)
    assert set(EVAL_DEFAULTS) <= set(EVAL_TYPES)


def test_overrides_accept_variant_options():
    # oracle_task_id is declared in delo.yaml and delo_oracle.yaml, both implementation delo.
    config = load_method_config("delo_shared_pool")
    settings = apply_overrides(config, ["method.oracle_task_id=true", "train.epochs=2"])

    assert settings.method.method["oracle_task_id"] is True
    assert settings.method.train["epochs"] == 2


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=12, warmup_steps=2)

    assert factor(0) == pytest.approx(0.5)
    assert factor(1) == pytest.approx(1.0)
    assert factor(2) == pytest.approx(1.0)
    assert factor(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(12) == pytest.approx(0.0)


class FixedLogits(Method):
    """A method whose logits are a fixed table indexed by the batch targets' sample order."""

    key = "fixed_logits"

    def __init__(self, table: torch.Tensor, layout: TaskLayout) -> None:
        torch.nn.Module.__init__(self)
        self.layout = layout
        self.table = table
        self.received: list[int | None] = []

    def predict(self, batch: Batch, task: int | None) -> Prediction:
        self.received.append(task)
        return Prediction(logits=self.table[: batch.size], selected_task=torch.tensor([0, 1, 1]))


def fixed_batch(targets: torch.Tensor) -> Batch:
    return Batch(inputs={}, missing=torch.tensor([0, 1, 2]), targets=targets, sample_ids=["a", "b", "c"])


def test_task_aware_masks_other_tasks():
    layout = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=False)
    # Sample a is class 2, b class 3, c class 2; the largest logits sit in task 0's block.
    table = torch.tensor([[9.0, 0.0, 1.0, 0.5], [0.0, 9.0, 0.2, 0.8], [9.0, 9.0, -1.0, -2.0]])
    method = FixedLogits(table, layout)
    batch = fixed_batch(torch.tensor([2, 3, 2]))
    common = dict(task=1, trained_task=1, layout=layout, device=torch.device("cpu"), autocast=torch.no_grad)

    agnostic = predict_task_split(method, [batch], setting=TASK_AGNOSTIC, **common)
    aware = predict_task_split(method, [batch], setting=TASK_AWARE, **common)

    assert method.received == [None, 1]
    assert [record.predicted for record in agnostic] == [(0,), (1,), (0,)]
    assert [record.predicted for record in aware] == [(2,), (3,), (2,)]
    assert score(agnostic, False, range(4)) == 0.0
    assert score(aware, False, range(2, 4)) == 100.0


def test_multi_label_task_aware_cuts_labels():
    layout = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=True)
    table = torch.tensor([[5.0, -5.0, 5.0, -5.0], [-5.0, -5.0, -5.0, 5.0], [5.0, 5.0, -5.0, -5.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    method = FixedLogits(table, layout)
    common = dict(task=1, trained_task=1, layout=layout, device=torch.device("cpu"), autocast=torch.no_grad)

    aware = predict_task_split(method, [fixed_batch(targets)], setting=TASK_AWARE, **common)

    assert [record.labels for record in aware] == [(2,), (2, 3), (2,)]
    assert [record.predicted for record in aware] == [(2,), (3,), ()]
    # Class 2: TP 1, FN 2 -> F1 = 2/4. Class 3: TP 1 -> F1 = 1. Mean 75%.
    assert score(aware, True, range(2, 4)) == pytest.approx(75.0)
    breakdown = missing_breakdown(aware, True, seen=4)
    assert breakdown["complete"] == pytest.approx(100.0)
    # Sample b alone: class 2 missed (F1 0), class 3 hit (F1 1).
    assert breakdown["text_missing"] == pytest.approx(50.0)
    # Sample c alone: class 2 missed and nothing predicted; class 3 absent everywhere is skipped.
    assert breakdown["image_missing"] == pytest.approx(0.0)


def test_task_identification_rates():
    layout = TaskLayout(task_classes=((0, 1), (2, 3)), multi_label=False)
    table = torch.zeros(3, 4)
    method = FixedLogits(table, layout)
    common = dict(trained_task=1, layout=layout, device=torch.device("cpu"), autocast=torch.no_grad)
    batch = fixed_batch(torch.tensor([2, 3, 2]))

    records = predict_task_split(method, [batch], setting=TASK_AGNOSTIC, task=1, **common)
    identification = task_identification(records)

    # selected_task is [0, 1, 1] and the true task is 1 for all three samples.
    assert identification["overall"] == {"accuracy": pytest.approx(200 / 3), "samples": 3}
    assert identification["per_missing_type"]["complete"]["accuracy"] == 0.0
    assert identification["per_missing_type"]["image_missing"]["accuracy"] == 100.0


def test_interrupt_keeps_finished_tasks(colours, finetune_run, tmp_path, monkeypatch):
    import cmml_bench.engine.runner as runner

    original = runner.train_task

    def interrupted_in_task_two(method, task, *arguments):
        if task == 1:
            raise KeyboardInterrupt
        return original(method, task, *arguments)

    monkeypatch.setattr(runner, "train_task", interrupted_in_task_two)
    with pytest.raises(runner.RunInterrupted, match="tasks 1-1 are saved .* run the same command again to resume"):
        run_one(request(colours, tmp_path))
    folder = tmp_path / "colours" / "finetune" / "seed0"
    partial = json.loads((folder / "result.json").read_text())
    monkeypatch.setattr(runner, "train_task", original)
    resumed = run_one(request(colours, tmp_path))

    assert partial["tasks_completed"] == 1
    assert partial["status"] == "incomplete"
    assert "interrupted during task 2" in (folder / "run.log").read_text()
    assert resumed.status == "complete"
    assert (folder / "predictions.csv").read_bytes() == (finetune_run / "predictions.csv").read_bytes()
