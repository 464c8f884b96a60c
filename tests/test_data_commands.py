"""`cmml-bench protocol show/list` and `cmml-bench data prepare` through click."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cmml_bench.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_show_json_exact_counts(tuxpaint_data_root, tiny_protocol_file):
    result = run("protocol", "show", str(tiny_protocol_file), "--json", "--data-root", str(tuxpaint_data_root))
    assert result.exit_code == 0, result.output

    # task 0: train 4 -> 2 masked (1 image, 1 text); test 5 -> 2 masked (1, 1)
    # task 1: train 2 -> 1 masked (0 image, 1 text); test 4 -> 2 masked (1, 1)
    assert json.loads(result.output) == {
        "protocol": "tiny_tux",
        "tasks": [
            {
                "task": 0,
                "classes": ["animals/birds", "animals/mammals"],
                "splits": {
                    "train": {"samples": 4, "complete": 2, "text_missing": 1, "image_missing": 1},
                    "test": {"samples": 5, "complete": 3, "text_missing": 1, "image_missing": 1},
                },
            },
            {
                "task": 1,
                "classes": ["clothes", "food/fruit"],
                "splits": {
                    "train": {"samples": 2, "complete": 1, "text_missing": 1, "image_missing": 0},
                    "test": {"samples": 4, "complete": 2, "text_missing": 1, "image_missing": 1},
                },
            },
        ],
    }


def test_show_table_lists_classes(tuxpaint_data_root, tiny_protocol_file):
    result = run("protocol", "show", str(tiny_protocol_file), "--data-root", str(tuxpaint_data_root))
    assert result.exit_code == 0, result.output
    assert "animals/mammals" in result.output
    assert "svg_only 1" in result.output


def test_show_env_data_root(tuxpaint_data_root, tiny_protocol_file, monkeypatch):
    monkeypatch.setenv("CMML_BENCH_DATA", str(tuxpaint_data_root))
    result = run("protocol", "show", str(tiny_protocol_file), "--json", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tasks"][1]["splits"]["test"]["samples"] == 4


def test_show_missing_data_names_prepare(tmp_path):
    result = run("protocol", "show", "tuxpaint_mixed", "--data-root", str(tmp_path))
    assert result.exit_code == 1
    assert "cmml-bench data prepare tuxpaint" in result.output


def test_show_unknown_protocol():
    result = run("protocol", "show", "no_such_protocol")
    assert result.exit_code == 1
    assert "protocol 'no_such_protocol' not found" in result.output


def test_list_shows_shipped_protocols():
    result = CliRunner().invoke(main, ["protocol", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "tuxpaint_mixed" in result.output
    assert "mmimdb_text" in result.output


def test_prepare_skips_when_already_prepared(tmp_path):
    (tmp_path / "tuxpaint").mkdir()
    (tmp_path / "tuxpaint/.prepared.json").write_text("{}", encoding="utf-8")
    result = run("data", "prepare", "tuxpaint", "--data-root", str(tmp_path))
    assert result.exit_code == 0
    assert "already prepared" in result.output


def test_prepare_rejects_unknown_name(tmp_path):
    result = run("data", "prepare", "food101", "--data-root", str(tmp_path))
    assert result.exit_code == 2
    assert "food101" in result.output
