"""Tests of `cmml-bench check` against stored references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cmml_bench.report.commands import check_command
from report_fixtures import write_run

# AP = (70 + 80) / 2 = 75, forgetting = 90 - 70 = 20, last = 80.
REFERENCE_MATRIX = [[90], [70, 80]]


def invoke(*arguments: str):
    return CliRunner().invoke(check_command, [str(argument) for argument in arguments])


@pytest.fixture()
def reference(tmp_path) -> Path:
    run_dir = write_run(tmp_path / "reference_runs", "alpha", 0, {"task_agnostic": REFERENCE_MATRIX})
    path = tmp_path / "reference.json"
    result = invoke(run_dir, "--write-reference", path)
    assert result.exit_code == 0, result.output
    return path


def test_write_reference_contents(reference):
    stored = json.loads(reference.read_text())
    assert stored["protocol"] == "toy-protocol"
    assert stored["method"] == "alpha"
    assert stored["seed"] == 0
    assert stored["backbone"] == "tiny-vilt"
    assert stored["subset"] is None
    assert stored["settings"]["task_agnostic"]["ap"] == pytest.approx(75.0)
    assert stored["settings"]["task_agnostic"]["forgetting"] == pytest.approx(20.0)


def test_same_run_passes(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": REFERENCE_MATRIX})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 0, result.output
    assert "ok    task_agnostic/ap: run 75.00, reference 75.00, gap +0.00" in result.output
    assert "all 6 metrics within 2.0 points" in result.output


def test_small_drop_passes_with_gap(tmp_path, reference):
    # AP 73.5 (gap -1.5), forgetting 21.5 (+1.5), last 78.5 (-1.5): all within 2 points.
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[90], [68.5, 78.5]]})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 0, result.output
    assert "task_agnostic/ap: run 73.50, reference 75.00, gap -1.50" in result.output
    assert "task_agnostic/forgetting: run 21.50, reference 20.00, gap +1.50" in result.output


def test_large_ap_drop_fails_naming_metric(tmp_path, reference):
    # Final row 67, 77: AP 72 (worse by 3), forgetting 23 (worse by 3), last 77 (worse by 3).
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[90], [67, 77]]})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 1
    assert (
        "FAIL  task_agnostic/ap: run 72.00, reference 75.00, gap -3.00 (higher is better): "
        "worse by 3.00 > tolerance 2.00" in result.output
    )
    assert "FAIL  task_agnostic/forgetting: run 23.00, reference 20.00, gap +3.00" in result.output
    assert "task_agnostic/ap" in result.output.splitlines()[-1]


def test_tolerance_option_widens_the_check(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[90], [67, 77]]})
    result = invoke(run_dir, "--reference", reference, "--tolerance", "3.5")
    assert result.exit_code == 0, result.output


def test_improvement_passes(tmp_path, reference):
    # Less forgetting (10) and a higher AP (85) are improvements, not failures.
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[90], [80, 90]]})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 0, result.output
    assert "gap -10.00 (lower is better)" in result.output


def test_only_forgetting_worse_fails(tmp_path, reference):
    # R[0][0] = 95 raises forgetting to 25 (worse by 5) while AP and last stay equal.
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[95], [70, 80]]})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 1
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failing] == [
        "FAIL  task_agnostic/forgetting",
        "FAIL  task_agnostic/forgetting_max",
        "FAIL  task_agnostic/bwt",
    ]


def test_missing_setting_fails(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_aware": REFERENCE_MATRIX})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 1
    assert "FAIL  task_agnostic/ap: reference 75.00, missing from the run" in result.output


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"method": "beta"}, "method: run 'beta', reference 'alpha'"),
        ({"method": "alpha", "protocol": "other"}, "protocol: run 'other', reference 'toy-protocol'"),
        ({"method": "alpha", "identity": {"subset": 100}}, "subset: run 100, reference None"),
        ({"method": "alpha", "identity": {"backbone": "vilt"}}, "backbone: run 'vilt', reference 'tiny-vilt'"),
    ],
)
def test_mismatched_identity_is_an_error(tmp_path, reference, kwargs, field):
    method = kwargs.pop("method")
    run_dir = write_run(tmp_path / "runs", method, 0, {"task_agnostic": REFERENCE_MATRIX}, **kwargs)
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 2
    assert "describe different experiments" in result.output
    assert field in result.output


def test_seed_difference_is_a_note(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 3, {"task_agnostic": REFERENCE_MATRIX})
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 0, result.output
    assert "note: run seed 3 differs from reference seed 0" in result.output


def test_incomplete_run_rejected(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": [[90]]}, status="incomplete", num_tasks=2)
    result = invoke(run_dir, "--reference", reference)
    assert result.exit_code == 2
    assert "only a complete run can be checked" in result.output


def test_options_are_exclusive(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": REFERENCE_MATRIX})
    neither = invoke(run_dir)
    both = invoke(run_dir, "--reference", reference, "--write-reference", tmp_path / "new.json")
    assert neither.exit_code == 2
    assert both.exit_code == 2
    assert "exactly one of --reference FILE and --write-reference FILE" in neither.output


def test_result_file_path_accepted(tmp_path, reference):
    run_dir = write_run(tmp_path / "runs", "alpha", 0, {"task_agnostic": REFERENCE_MATRIX})
    result = invoke(run_dir / "result.json", "--reference", reference)
    assert result.exit_code == 0, result.output
