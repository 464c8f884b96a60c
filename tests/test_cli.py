"""`cmml-bench run` and `cmml-bench list` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cmml_bench.cli import main
from run_fixtures import write_manifest_dataset, write_protocol

FAST = ["--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "backbone.config.initializer_range=0.2"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("colours")
    return write_protocol(folder / "colours.yaml", write_manifest_dataset(folder / "data"))


def invoke(*arguments: str):
    return CliRunner().invoke(main, list(arguments), catch_exceptions=False)


def test_list_shows_all_three_registries():
    result = invoke("list")

    assert result.exit_code == 0
    for name in ("methods", "finetune", "linear_probe", "joint", "protocols", "tuxpaint_mixed", "backbones", "vilt-tiny"):
        assert name in result.output


def test_run_help_explains_stop_after():
    result = invoke("run", "--help")

    assert result.exit_code == 0
    assert "1 = after the first task" in result.output
    assert "--seeds" in result.output


def test_run_several_seeds(colours, tmp_path):
    result = invoke(
        "run", "--method", "linear_probe", "--protocol", str(colours), "--seeds", "0,1",
        "--stop-after", "1", "--out", str(tmp_path), "--quiet", *FAST,
    )

    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        stored = json.loads((tmp_path / "colours" / "linear_probe" / f"seed{seed}" / "result.json").read_text())
        assert stored["seed"] == seed
        assert stored["tasks_completed"] == 1
    assert "incomplete (1/3 tasks)" in result.output


def test_run_rejects_unknown_set_section(colours, tmp_path):
    result = invoke("run", "--method", "finetune", "--protocol", str(colours), "--out", str(tmp_path), "--set", "optim.lr=1")

    assert result.exit_code == 1
    assert "unknown --set section 'optim'" in result.output
    assert not any(tmp_path.iterdir())


def test_run_reports_absent_data(tmp_path):
    protocol = write_protocol(tmp_path / "nodata.yaml", tmp_path / "absent")

    result = invoke("run", "--method", "finetune", "--protocol", str(protocol), "--out", str(tmp_path / "out"))

    assert result.exit_code == 1
    assert "data for protocol nodata not found" in result.output


def test_run_rejects_stop_after_out_of_range(colours, tmp_path):
    result = invoke("run", "--method", "finetune", "--protocol", str(colours), "--out", str(tmp_path), "--stop-after", "4")

    assert result.exit_code == 1
    assert "--stop-after must be between 1 and 3, got 4" in result.output


def test_run_rejects_bad_seed_list(colours, tmp_path):
    result = invoke("run", "--method", "finetune", "--protocol", str(colours), "--seeds", "0,x")

    assert result.exit_code == 2
    assert "comma-separated integers" in result.output


def test_run_rejects_unknown_backbone(colours, tmp_path):
    result = invoke("run", "--method", "finetune", "--protocol", str(colours), "--out", str(tmp_path), "--backbone", "resnet")

    assert result.exit_code == 1
    assert "unknown backbone 'resnet'; choose one of: minilm-mobilenet, vilt, vilt-tiny" in result.output
    assert not any(tmp_path.iterdir())
