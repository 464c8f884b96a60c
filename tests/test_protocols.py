"""Protocol files: loading, validation, class order, task assignment and the built benchmark."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from cmml_bench.data.benchmark import build_benchmark
from cmml_bench.data.masks import MissingMix
from cmml_bench.data.splits import assign_task, order_classes
from cmml_bench.data.types import MissingType
from cmml_bench.protocols import ProtocolError, list_protocols, load_protocol
from conftest import TINY_TUXPAINT_PROTOCOL

SHIPPED = [
    "food101_image", "food101_mixed", "food101_text", "mmimdb_image", "mmimdb_mixed",
    "mmimdb_text", "tuxpaint_drift", "tuxpaint_mixed", "clipart_mixed",
]


def write_protocol(tmp_path: Path, text: str, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in TINY_TUXPAINT_PROTOCOL
    return TINY_TUXPAINT_PROTOCOL.replace(old, new)


# --- shipped files ----------------------------------------------------------


def test_shipped_protocols_all_load():
    listed = dict(list_protocols())
    for name in SHIPPED:
        assert name in listed
        assert not listed[name].startswith("(invalid")
        assert load_protocol(name).name == name


def test_tuxpaint_mixed_settings():
    protocol = load_protocol("tuxpaint_mixed")
    assert (protocol.num_tasks, protocol.classes_per_task) == (5, 4)
    assert protocol.dataset == "tuxpaint"
    assert protocol.backbone == "minilm-mobilenet"
    assert protocol.max_text_length == 40
    assert protocol.score_name == "accuracy"
    assert protocol.multi_label is False
    assert protocol.mix(4, "test") == MissingMix("both", 0.7, 0.5)


def test_mmimdb_is_multi_label_macro_f1():
    protocol = load_protocol("mmimdb_mixed")
    assert protocol.multi_label is True
    assert protocol.score_name == "macro_f1"
    assert protocol.task_assignment == "earliest_task"
    assert len(protocol.class_filter.include) == 20
    assert protocol.max_text_length == 1024


def test_food101_settings():
    protocol = load_protocol("food101_text")
    assert (protocol.num_tasks, protocol.classes_per_task) == (10, 10)
    assert protocol.class_filter.exclude == ("waffles",)
    assert protocol.mix(9, "train") == MissingMix("text", 0.7, 0.5)
    assert protocol.max_text_length == 512


def test_drift_mix_per_task_and_split():
    protocol = load_protocol("tuxpaint_drift")
    assert protocol.mix(0, "train") == MissingMix("both", 0.3, 0.2)
    assert protocol.mix(3, "train") == MissingMix("both", 0.6, 0.65)
    assert protocol.mix(3, "test") == MissingMix("image", 0.5, 0.5)


def test_to_dict_is_json_and_hash_ignores_path(tmp_path):
    first = load_protocol(write_protocol(tmp_path, TINY_TUXPAINT_PROTOCOL, "a.yaml"))
    second = load_protocol(write_protocol(tmp_path, TINY_TUXPAINT_PROTOCOL, "b.yaml"))
    changed = load_protocol(write_protocol(tmp_path, edited("rate: 0.5", "rate: 0.6"), "c.yaml"))
    json.dumps(first.to_dict())
    assert first.content_hash() == second.content_hash()
    assert first.content_hash() != changed.content_hash()
    assert first.to_dict()["missing"][1]["test"] == {"type": "both", "rate": 0.5, "both_ratio": 0.5}


def test_unknown_name_suggests_close_match():
    with pytest.raises(ProtocolError, match="tuxpaint_mixed"):
        load_protocol("tuxpaint_mixd")


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "fix"),
    [
        ("num_tasks: 2", "num_tasks: 2\nnum_task: 3", "num_task", "did you mean 'num_tasks'"),
        ("num_tasks: 2", "num_tasks: two", "num_tasks", "whole number"),
        ("dataset: tuxpaint", "dataset: cifar", "dataset", "use one of"),
        ("rate: 0.5", "rate: 1.5", "missing.default.rate", r"\[0, 1\]"),
        ("both_ratio: 0.5}", "both_ratio: -0.1}", "missing.default.both_ratio", r"\[0, 1\]"),
        ("type: both", "type: audio", "missing.default.type", "use one of text, image, both"),
        ("class_order: sorted", "class_order: [a, b, c]", "class_order", "num_tasks x classes_per_task = 4"),
        ("class_order: sorted", "class_order: random", "class_order", "permutation"),
        ("classes: {min_samples: 3}", "classes: {include: [a, b]}", "classes.include", "fewer than"),
        ("classes: {min_samples: 3}", "classes: {min_sample: 3}", "classes.min_sample", "min_samples"),
        ("split: {test_fraction: 0.5, split_seed: 0}", "split: {test_fraction: 0.5}", "split.split_seed", "missing"),
        ("split: {test_fraction: 0.5, split_seed: 0}", "split: {test_fraction: 1.0, split_seed: 0}", "split.test_fraction", "strictly"),
        ("max_text_length: 40", "max_text_length: 0", "max_text_length", ">= 1"),
        (
            "  default: {type: both, rate: 0.5, both_ratio: 0.5}",
            "  default: {type: both, rate: 0.5, both_ratio: 0.5}\n  tasks: {2: {rate: 0.1}}",
            "missing.tasks.2",
            "count from 0",
        ),
        (
            "  default: {type: both, rate: 0.5, both_ratio: 0.5}",
            "  default: {train: {rate: 0.2}, validation: {rate: 0.1}}",
            "missing.default.validation",
            "allowed keys: train, test",
        ),
    ],
)
def test_validation_error_names_file_key_and_fix(tmp_path, old, new, key, fix):
    path = write_protocol(tmp_path, edited(old, new))
    with pytest.raises(ProtocolError) as caught:
        load_protocol(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert re.search(fix, message), message


def test_missing_required_key(tmp_path):
    path = write_protocol(tmp_path, edited("backbone: minilm-mobilenet\n", ""))
    with pytest.raises(ProtocolError, match=r"key 'backbone': missing"):
        load_protocol(path)


def test_own_split_dataset_rejects_test_fraction(tmp_path):
    text = edited("dataset: tuxpaint", "dataset: food101").replace("classes: {min_samples: 3}\n", "")
    with pytest.raises(ProtocolError, match=r"key 'split': food101 has its own"):
        load_protocol(write_protocol(tmp_path, text))


def test_multi_label_needs_task_assignment(tmp_path):
    text = (
        edited("dataset: tuxpaint", "dataset: mmimdb")
        .replace("classes: {min_samples: 3}\n", "")
        .replace("split: {test_fraction: 0.5, split_seed: 0}", "split: dataset")
    )
    with pytest.raises(ProtocolError, match=r"key 'task_assignment'"):
        load_protocol(write_protocol(tmp_path, text))
    fixed = load_protocol(write_protocol(tmp_path, text + "task_assignment: earliest_task\n", "ok.yaml"))
    assert fixed.multi_label is True


def test_task_override_merges_over_default(tmp_path):
    text = edited(
        "  default: {type: both, rate: 0.5, both_ratio: 0.5}",
        "  default: {type: both, rate: 0.5, both_ratio: 0.5}\n  tasks: {1: {test: {both_ratio: 0.9}}}",
    )
    protocol = load_protocol(write_protocol(tmp_path, text))
    assert protocol.mix(1, "test") == MissingMix("both", 0.5, 0.9)
    assert protocol.mix(1, "train") == MissingMix("both", 0.5, 0.5)
    assert protocol.mix(0, "test") == MissingMix("both", 0.5, 0.5)


# --- class order and task assignment ---------------------------------------


def protocol_with_order(tmp_path, order: str):
    return load_protocol(write_protocol(tmp_path, edited("class_order: sorted", f"class_order: {order}")))


def test_class_order_sorted(tmp_path):
    protocol = protocol_with_order(tmp_path, "sorted")
    assert order_classes(protocol, ["d", "b", "a", "c"]) == ["a", "b", "c", "d"]


def test_class_order_permutation_reproducible(tmp_path):
    classes = [f"class{i:02d}" for i in range(4)]
    first = order_classes(protocol_with_order(tmp_path, "{permutation: {seed: 3}}"), classes)
    again = order_classes(protocol_with_order(tmp_path, "{permutation: {seed: 3}}"), list(reversed(classes)))
    other = order_classes(protocol_with_order(tmp_path, "{permutation: {seed: 4}}"), classes)
    assert first == again
    assert sorted(first) == classes
    assert first != classes
    assert other != first


def test_class_order_explicit(tmp_path):
    protocol = protocol_with_order(tmp_path, "[food/fruit, clothes, animals/birds, animals/mammals]")
    assert order_classes(protocol, []) == ["food/fruit", "clothes", "animals/birds", "animals/mammals"]


def test_earliest_task_assignment():
    class_index = {label: index for index, label in enumerate("abcdef")}
    assert assign_task(["d", "a"], class_index, 2) == (0, (0, 3))
    assert assign_task(["f"], class_index, 2) == (2, (5,))
    assert assign_task(["f", "c", "zzz"], class_index, 2) == (1, (2, 5))
    assert assign_task(["zzz"], class_index, 2) is None


# --- built benchmark --------------------------------------------------------


def test_benchmark_tasks_and_split(tuxpaint_data_root, tiny_protocol_file):
    benchmark = build_benchmark(load_protocol(tiny_protocol_file), seed=0, data_root=tuxpaint_data_root)
    assert benchmark.class_order == ["animals/birds", "animals/mammals", "clothes", "food/fruit"]
    assert benchmark.tasks[1].classes == ["clothes", "food/fruit"]
    assert benchmark.tasks[1].class_indices == [2, 3]
    # per class round(0.5 n) test samples, halves up: birds 2 of 4, mammals 3 of 5, clothes and fruit 2 of 3
    assert [len(task.train) for task in benchmark.tasks] == [4, 2]
    assert [len(task.test) for task in benchmark.tasks] == [5, 4]
    assert {sample.targets for sample in benchmark.tasks[1].test} == {(2,), (3,)}
    assert benchmark.skipped == {"svg_only": 1, "text_without_image": 1}


def test_run_seed_changes_masks_not_split(tuxpaint_data_root, tiny_protocol_file):
    protocol = load_protocol(tiny_protocol_file)
    first = build_benchmark(protocol, seed=0, data_root=tuxpaint_data_root)
    second = build_benchmark(protocol, seed=1, data_root=tuxpaint_data_root)
    test_ids = [[s.sample.sample_id for s in task.test] for task in first.tasks]
    assert test_ids == [[s.sample.sample_id for s in task.test] for task in second.tasks]
    assert first.class_order_hash() == second.class_order_hash()
    assert first.mask_hash() == build_benchmark(protocol, seed=0, data_root=tuxpaint_data_root).mask_hash()
    assert first.mask_hash() != second.mask_hash()


def test_class_filter_count_mismatch(tuxpaint_data_root, tmp_path):
    path = write_protocol(tmp_path, edited("classes: {min_samples: 3}", "classes: {min_samples: 1}"))
    with pytest.raises(ProtocolError, match=r"keep 5 classes.*= 4"):
        build_benchmark(load_protocol(path), seed=0, data_root=tuxpaint_data_root)


def test_unknown_class_in_include(tuxpaint_data_root, tmp_path):
    text = edited("classes: {min_samples: 3}", "classes: {include: [clothes, food/fruit, animals/birds, animals/fish]}")
    with pytest.raises(ProtocolError, match="'animals/fish' has 0 valid samples"):
        build_benchmark(load_protocol(write_protocol(tmp_path, text)), seed=0, data_root=tuxpaint_data_root)


def test_subset_caps_per_class(tuxpaint_data_root, tiny_protocol_file):
    benchmark = build_benchmark(load_protocol(tiny_protocol_file), seed=0, data_root=tuxpaint_data_root, subset=1)
    for task in benchmark.tasks:
        assert Counter(s.targets for s in task.train) == Counter({(index,): 1 for index in task.class_indices})
        assert Counter(s.targets for s in task.test) == Counter({(index,): 1 for index in task.class_indices})


def test_mmimdb_earliest_task_benchmark(tmp_path):
    from test_readers import write_movie

    root = tmp_path / "data/mmimdb"
    (root / "labels").mkdir(parents=True)
    movies = {"m1": ["Drama", "Action"], "m2": ["Drama"], "m3": ["Western"], "m4": ["Comedy", "Horror"], "m5": ["Horror"]}
    for movie_id, genres in movies.items():
        write_movie(root, movie_id, genres)
    (root / "split.json").write_text(json.dumps({"train": ["m1", "m2", "m3", "m4"], "dev": [], "test": ["m5"]}))
    text = """\
description: four genres in two tasks
dataset: mmimdb
root: mmimdb
classes: {include: [Action, Comedy, Drama, Horror]}
classes_per_task: 2
num_tasks: 2
task_assignment: earliest_task
backbone: vilt
max_text_length: 64
missing: {default: {type: text, rate: 1.0}}
"""
    benchmark = build_benchmark(load_protocol(write_protocol(tmp_path, text)), seed=0, data_root=tmp_path / "data")
    train = {s.sample.sample_id: (s.task, s.targets) for task in benchmark.tasks for s in task.train}
    # sorted order: Action 0, Comedy 1 | Drama 2, Horror 3
    assert train == {"m1": (0, (0, 2)), "m2": (1, (2,)), "m4": (0, (1, 3))}
    assert [s.sample.sample_id for s in benchmark.tasks[1].test] == ["m5"]
    assert benchmark.skipped == {"no_used_label": 1}
    assert {s.missing for task in benchmark.tasks for s in task.train} == {MissingType.TEXT_MISSING}


def test_load_by_file_name_and_path(tmp_path):
    assert load_protocol("tuxpaint_mixed.yaml").name == "tuxpaint_mixed"
    with pytest.raises(ProtocolError, match="not found; check the path"):
        load_protocol(tmp_path / "absent.yaml")
