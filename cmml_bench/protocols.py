"""Protocol files: dataset, class order, task split and missing-modality mix.

A protocol is a YAML file in one of `paths.protocol_dirs()` (loaded by its
name) or anywhere on disk (loaded by its path). `load_protocol` validates it
and raises `ProtocolError` with the file, the key and the fix. The format is
documented in protocols/README.md and docs/protocols.md.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmml_bench import paths
from cmml_bench.data.masks import MISSING_KINDS, MissingMix
from cmml_bench.data.types import SPLITS

DATASETS = ("tuxpaint", "clipart", "food101", "mmimdb", "manifest")
MULTI_LABEL_DATASETS = ("mmimdb",)
FOLDER_LABEL_DATASETS = ("tuxpaint", "clipart")
OWN_SPLIT_DATASETS = ("food101", "mmimdb", "manifest")
TASK_ASSIGNMENT_RULES = ("earliest_task",)

TOP_KEYS = (
    "name", "description", "dataset", "root", "multi_label", "class_order",
    "classes_per_task", "num_tasks", "classes", "task_assignment", "split",
    "backbone", "max_text_length", "missing",
)
REQUIRED_KEYS = ("description", "dataset", "root", "classes_per_task", "num_tasks", "backbone", "max_text_length")
CLASS_FILTER_KEYS = ("include", "exclude", "min_samples", "label_depth")
SPLIT_KEYS = ("test_fraction", "split_seed")
MIX_KEYS = ("type", "rate", "both_ratio")
DEFAULT_MIX = MissingMix(type="both", rate=0.0, both_ratio=0.5)


class ProtocolError(ValueError):
    """An invalid protocol file or name: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ClassFilter:
    """The label filters of a protocol, applied to the data before the class order."""

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    min_samples: int = 1
    label_depth: int | None = None

    def to_dict(self) -> dict:
        return {
            "include": list(self.include) if self.include is not None else None,
            "exclude": list(self.exclude),
            "min_samples": self.min_samples,
            "label_depth": self.label_depth,
        }


@dataclass(frozen=True)
class Protocol:
    """A validated protocol file. `mix(task, split)` gives the missing-modality mix."""

    name: str
    path: Path
    description: str
    dataset: str
    root: str
    num_tasks: int
    classes_per_task: int
    multi_label: bool
    class_order_rule: str | dict | list
    class_filter: ClassFilter
    task_assignment: str | None
    test_fraction: float | None
    split_seed: int | None
    backbone: str
    max_text_length: int
    mixes: tuple[tuple[MissingMix, MissingMix], ...] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return self.num_tasks * self.classes_per_task

    @property
    def score_name(self) -> str:
        return "macro_f1" if self.multi_label else "accuracy"

    def mix(self, task: int, split: str) -> MissingMix:
        """Return the missing-modality mix of one task (0-based) and split."""
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} is out of range for {self.num_tasks} tasks")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return self.mixes[task][SPLITS.index(split)]

    def data_dir(self, data_root: str | os.PathLike | None = None) -> Path:
        """Return the dataset folder: `root` itself when absolute, else under the data root."""
        root = Path(self.root).expanduser()
        if root.is_absolute():
            return root
        return paths.data_root(data_root) / root

    def to_dict(self) -> dict:
        """Return the resolved protocol as JSON-able data (every default filled in)."""
        return {
            "name": self.name,
            "description": self.description,
            "dataset": self.dataset,
            "root": self.root,
            "multi_label": self.multi_label,
            "score_name": self.score_name,
            "class_order": self.class_order_rule,
            "classes_per_task": self.classes_per_task,
            "num_tasks": self.num_tasks,
            "classes": self.class_filter.to_dict(),
            "task_assignment": self.task_assignment,
            "split": (
                {"test_fraction": self.test_fraction, "split_seed": self.split_seed}
                if self.test_fraction is not None
                else "dataset"
            ),
            "backbone": self.backbone,
            "max_text_length": self.max_text_length,
            "missing": [
                {"task": task, "train": train.to_dict(), "test": test.to_dict()}
                for task, (train, test) in enumerate(self.mixes)
            ],
        }

    def content_hash(self) -> str:
        """Return a SHA-256 hex digest of the resolved content (independent of the file's path)."""
        payload = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def find_protocol_file(name_or_path: str | os.PathLike) -> Path:
    """Return the YAML file for a protocol name (searched in protocol_dirs) or a path."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    has_folder = os.sep in text or "/" in text
    if candidate.suffix in (".yaml", ".yml") or has_folder:
        if candidate.is_file():
            return candidate.resolve()
        if has_folder:
            raise ProtocolError(f"protocol file {candidate} not found; check the path")
        text = candidate.stem

    for folder in paths.protocol_dirs():
        for suffix in (".yaml", ".yml"):
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path.resolve()

    known = [name for name, _ in list_protocols()]
    hint = difflib.get_close_matches(text, known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    searched = ", ".join(str(folder) for folder in paths.protocol_dirs())
    raise ProtocolError(
        f"protocol {text!r} not found in {searched}{suggestion} "
        f"(run `cmml-bench protocol list`, or pass a path to a YAML file)"
    )


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """Load and validate a protocol by name or by path."""
    path = find_protocol_file(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ProtocolError(f"{path}: invalid YAML: {error}") from error
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{path}: not UTF-8 text: {error}") from error
    return parse_protocol(raw, path)


def list_protocols() -> list[tuple[str, str]]:
    """Return (name, description) of every protocol file, first folder wins on a name clash."""
    found: dict[str, str] = {}
    for folder in paths.protocol_dirs():
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.stem in found:
                continue
            try:
                found[path.stem] = parse_protocol(yaml.safe_load(path.read_text(encoding="utf-8")), path).description
            except (ProtocolError, yaml.YAMLError, UnicodeDecodeError) as error:
                found[path.stem] = f"(invalid: {error})"
    return sorted(found.items())


class _Checker:
    """Type and range checks that raise ProtocolError naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, fix: str) -> ProtocolError:
        return ProtocolError(f"{self.path}: key '{key}': {problem}; {fix}")

    def known_keys(self, mapping: dict, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"allowed keys: {', '.join(allowed)}"
            raise self.fail(f"{where}{key}", "unknown key", fix)

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__} {value!r}", "write it as `key: value` lines")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}", "quote the value if YAML reads it as another type")
        return value.strip()

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}", f"write a whole number >= {minimum}")
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}", f"write a whole number >= {minimum}")
        return value

    def fraction(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {value!r}", "write a number in [0, 1], for example 0.7")
        if not 0 <= value <= 1:
            raise self.fail(key, f"must be in [0, 1], got {value}", "write a number in [0, 1], for example 0.7")
        return float(value)

    def string_list(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.fail(key, f"must be a list of strings, got {value!r}", "write `[a, b, c]` or one `- item` per line")
        duplicates = sorted({item for item in value if value.count(item) > 1})
        if duplicates:
            raise self.fail(key, f"lists {', '.join(duplicates)} more than once", "keep one entry per class")
        return tuple(value)


def parse_protocol(raw: Any, path: Path) -> Protocol:
    """Validate the parsed YAML of a protocol file and build the Protocol."""
    check = _Checker(path)
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: the file must contain a mapping of protocol keys, got {type(raw).__name__}")
    check.known_keys(raw, TOP_KEYS, "")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise check.fail(key, "missing", "add it (see protocols/README.md for the format)")

    dataset = check.string(raw["dataset"], "dataset")
    if dataset not in DATASETS:
        raise check.fail("dataset", f"unknown dataset {dataset!r}", f"use one of {', '.join(DATASETS)}")

    num_tasks = check.integer(raw["num_tasks"], "num_tasks", 1)
    classes_per_task = check.integer(raw["classes_per_task"], "classes_per_task", 1)
    multi_label = _parse_multi_label(raw, dataset, check)
    class_order = _parse_class_order(raw.get("class_order", "sorted"), num_tasks * classes_per_task, check)
    class_filter = _parse_class_filter(raw.get("classes", {}), dataset, num_tasks * classes_per_task, check)
    test_fraction, split_seed = _parse_split(raw.get("split"), dataset, check)

    return Protocol(
        name=check.string(raw.get("name", path.stem), "name"),
        path=path,
        description=_parse_description(raw["description"], check),
        dataset=dataset,
        root=check.string(raw["root"], "root"),
        num_tasks=num_tasks,
        classes_per_task=classes_per_task,
        multi_label=multi_label,
        class_order_rule=class_order,
        class_filter=class_filter,
        task_assignment=_parse_task_assignment(raw.get("task_assignment"), multi_label, check),
        test_fraction=test_fraction,
        split_seed=split_seed,
        backbone=check.string(raw["backbone"], "backbone"),
        max_text_length=check.integer(raw["max_text_length"], "max_text_length", 1),
        mixes=_parse_missing(raw.get("missing", {}), num_tasks, check),
    )


def _parse_description(value: Any, check: _Checker) -> str:
    text = check.string(value, "description")
    if "\n" in text:
        raise check.fail("description", "must be one line", "move details into comments in the file")
    return text


def _parse_multi_label(raw: dict, dataset: str, check: _Checker) -> bool:
    fixed = dataset in MULTI_LABEL_DATASETS
    if "multi_label" not in raw:
        return fixed
    value = raw["multi_label"]
    if not isinstance(value, bool):
        raise check.fail("multi_label", f"must be true or false, got {value!r}", "write true or false")
    if dataset != "manifest" and value != fixed:
        raise check.fail(
            "multi_label", f"dataset {dataset} is {'multi' if fixed else 'single'}-label", "remove the key"
        )
    return value


def _parse_class_order(value: Any, num_classes: int, check: _Checker) -> str | dict | list:
    if value == "sorted":
        return "sorted"
    if isinstance(value, list):
        classes = check.string_list(value, "class_order")
        if len(classes) != num_classes:
            raise check.fail(
                "class_order",
                f"lists {len(classes)} classes but num_tasks x classes_per_task = {num_classes}",
                "list exactly that many classes, or change num_tasks or classes_per_task",
            )
        return list(classes)
    if isinstance(value, dict) and list(value) == ["permutation"]:
        options = check.mapping(value["permutation"], "class_order.permutation")
        check.known_keys(options, ("seed",), "class_order.permutation.")
        if "seed" not in options:
            raise check.fail("class_order.permutation.seed", "missing", "add `seed: 0` (any integer >= 0)")
        return {"permutation": {"seed": check.integer(options["seed"], "class_order.permutation.seed", 0)}}
    raise check.fail(
        "class_order",
        f"invalid value {value!r}",
        "write `sorted`, `{permutation: {seed: N}}` or an explicit list of class names",
    )


def _parse_class_filter(value: Any, dataset: str, num_classes: int, check: _Checker) -> ClassFilter:
    options = check.mapping(value, "classes")
    check.known_keys(options, CLASS_FILTER_KEYS, "classes.")

    include = None
    if options.get("include") is not None:
        include = check.string_list(options["include"], "classes.include")
        if len(include) < num_classes:
            raise check.fail(
                "classes.include",
                f"lists {len(include)} classes, fewer than num_tasks x classes_per_task = {num_classes}",
                "add classes, or lower num_tasks or classes_per_task",
            )
    exclude = check.string_list(options["exclude"], "classes.exclude") if "exclude" in options else ()
    min_samples = check.integer(options.get("min_samples", 1), "classes.min_samples", 1)

    label_depth = None
    if "label_depth" in options:
        if dataset not in FOLDER_LABEL_DATASETS:
            raise check.fail(
                "classes.label_depth",
                f"only applies to folder-labelled datasets ({', '.join(FOLDER_LABEL_DATASETS)})",
                "remove the key",
            )
        label_depth = check.integer(options["label_depth"], "classes.label_depth", 1)
    elif dataset in FOLDER_LABEL_DATASETS:
        label_depth = 2
    return ClassFilter(include=include, exclude=exclude, min_samples=min_samples, label_depth=label_depth)


def _parse_split(value: Any, dataset: str, check: _Checker) -> tuple[float | None, int | None]:
    if dataset in OWN_SPLIT_DATASETS:
        if value not in (None, "dataset"):
            raise check.fail(
                "split", f"{dataset} has its own train/test split", "remove the key or write `split: dataset`"
            )
        return None, None

    if value is None:
        raise check.fail(
            "split", f"{dataset} has no split of its own", "add `split: {test_fraction: 0.3, split_seed: 0}`"
        )
    options = check.mapping(value, "split")
    check.known_keys(options, SPLIT_KEYS, "split.")
    for key in SPLIT_KEYS:
        if key not in options:
            raise check.fail(f"split.{key}", "missing", "give both test_fraction (0 < f < 1) and split_seed")
    fraction = check.fraction(options["test_fraction"], "split.test_fraction")
    if fraction in (0.0, 1.0):
        raise check.fail("split.test_fraction", f"must be strictly between 0 and 1, got {fraction}", "use for example 0.3")
    return fraction, check.integer(options["split_seed"], "split.split_seed", 0)


def _parse_task_assignment(value: Any, multi_label: bool, check: _Checker) -> str | None:
    if not multi_label:
        if value is not None:
            raise check.fail("task_assignment", "only applies to multi-label protocols", "remove the key")
        return None
    if value is None:
        raise check.fail("task_assignment", "missing for a multi-label protocol", "add `task_assignment: earliest_task`")
    if value not in TASK_ASSIGNMENT_RULES:
        raise check.fail("task_assignment", f"unknown rule {value!r}", f"use one of {', '.join(TASK_ASSIGNMENT_RULES)}")
    return value


def _parse_missing(value: Any, num_tasks: int, check: _Checker) -> tuple[tuple[MissingMix, MissingMix], ...]:
    options = check.mapping(value, "missing")
    check.known_keys(options, ("default", "tasks"), "missing.")
    default = _parse_split_mixes(options.get("default", {}), (DEFAULT_MIX, DEFAULT_MIX), "missing.default", check)

    overrides = check.mapping(options.get("tasks", {}), "missing.tasks")
    mixes = [default] * num_tasks
    for task, override in overrides.items():
        key = f"missing.tasks.{task}"
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num_tasks:
            raise check.fail(key, f"task must be an integer in [0, {num_tasks - 1}] (tasks count from 0)", "fix the task number")
        mixes[task] = _parse_split_mixes(override, default, key, check)
    return tuple(mixes)


def _parse_split_mixes(
    value: Any, base: tuple[MissingMix, MissingMix], key: str, check: _Checker
) -> tuple[MissingMix, MissingMix]:
    """Parse `{type, rate, both_ratio}` for both splits, or `train:`/`test:` sub-keys, over a base."""
    options = check.mapping(value, key)
    if any(split in options for split in SPLITS):
        check.known_keys(options, SPLITS, f"{key}.")
        return tuple(  # type: ignore[return-value]
            _parse_mix(options.get(split, {}), base[index], f"{key}.{split}", check)
            for index, split in enumerate(SPLITS)
        )
    return tuple(_parse_mix(options, base[index], key, check) for index in range(len(SPLITS)))  # type: ignore[return-value]


def _parse_mix(value: Any, base: MissingMix, key: str, check: _Checker) -> MissingMix:
    options = check.mapping(value, key)
    check.known_keys(options, MIX_KEYS, f"{key}.")
    kind = options.get("type", base.type)
    if kind not in MISSING_KINDS:
        raise check.fail(f"{key}.type", f"unknown missing type {kind!r}", f"use one of {', '.join(MISSING_KINDS)}")
    rate = check.fraction(options.get("rate", base.rate), f"{key}.rate")
    both_ratio = check.fraction(options.get("both_ratio", base.both_ratio), f"{key}.both_ratio")
    return MissingMix(type=kind, rate=rate, both_ratio=both_ratio)
