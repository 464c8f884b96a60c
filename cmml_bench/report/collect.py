"""Find run folders, load their `result.json` and group runs that may be pooled.

Runs are pooled (averaged over seeds, tested against each other) only when
they share protocol, evaluation setting, protocol hash, class-order hash,
backbone and subset. Task-aware and task-agnostic results always land in
different groups.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmml_bench.metrics import MatrixError, summarize, trained_block

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.csv"
REQUIRED_KEYS = ("protocol", "method", "seed", "status", "eval_settings", "matrix")
SETTING_TITLES = {
    "task_agnostic": "task-agnostic (no task id at test time)",
    "task_aware": "task-aware (the true task id is given at test time)",
}
MISSING_TYPES = ("complete", "text_missing", "image_missing")
IDENTITY_FIELDS = ("protocol_hash", "class_order_hash", "backbone", "subset")

# Stored metrics that differ from the ones recomputed from the matrix by more
# than this many points are reported as a warning.
METRIC_AGREEMENT_TOLERANCE = 0.01


class NoRunsFoundError(Exception):
    """The folder contains no run folder (no `result.json` at any depth)."""


@dataclass
class RunRecord:
    """One run folder and its parsed `result.json`."""

    path: Path
    result: dict[str, Any]

    @property
    def protocol(self) -> str:
        return str(self.result["protocol"])

    @property
    def method(self) -> str:
        return str(self.result["method"])

    @property
    def seed(self) -> int:
        return int(self.result["seed"])

    @property
    def status(self) -> str:
        return str(self.result["status"])

    @property
    def multi_label(self) -> bool:
        return bool(self.result.get("multi_label", False))

    @property
    def identity(self) -> dict[str, Any]:
        """protocol_hash, class_order_hash, backbone and subset, None where absent."""
        stored = self.result.get("identity") or {}
        identity = {name: stored.get(name) for name in IDENTITY_FIELDS}
        if identity["backbone"] is None:
            identity["backbone"] = self.result.get("backbone")
        return identity

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS_FILE


@dataclass
class SettingResult:
    """The results of one run in one evaluation setting."""

    run: RunRecord
    setting: str
    label: str
    matrix: list[list[float]]
    metrics: dict[str, float | None]
    missing_breakdown: dict[str, float | None]


@dataclass(frozen=True)
class GroupKey:
    """The fields that runs must share to be pooled."""

    protocol: str
    setting: str
    protocol_hash: str | None
    class_order_hash: str | None
    backbone: str | None
    subset: int | None


@dataclass
class RunGroup:
    """Runs that may be pooled: method label -> seed -> results."""

    key: GroupKey
    slug: str = ""
    methods: dict[str, dict[int, SettingResult]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def multi_label(self) -> bool:
        return any(item.run.multi_label for seeds in self.methods.values() for item in seeds.values())

    @property
    def num_tasks(self) -> int:
        return max(len(item.matrix) for seeds in self.methods.values() for item in seeds.values())


@dataclass
class Collection:
    """Everything found under the compared folder."""

    root: Path
    complete: list[RunRecord] = field(default_factory=list)
    incomplete: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_result_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Return every `result.json` under root at any depth, sorted, outside `exclude`."""
    found = []
    for path in sorted(root.rglob(RESULT_FILE)):
        if exclude is not None and exclude in path.parents:
            continue
        found.append(path)
    return found


def load_run(result_path: Path) -> RunRecord:
    """Parse one `result.json`. Raises ValueError naming the file when it is unusable."""
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{result_path}: cannot be read as JSON ({error})") from None

    if not isinstance(result, dict):
        raise ValueError(f"{result_path}: expected a JSON object, found {type(result).__name__}")

    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"{result_path}: missing required keys {', '.join(missing)}")

    try:
        int(result["seed"])
    except (TypeError, ValueError):
        raise ValueError(f"{result_path}: seed {result['seed']!r} is not an integer") from None
    return RunRecord(path=result_path.parent, result=result)


def collect_runs(root: Path, exclude: Path | None = None) -> Collection:
    """Load every run folder under root, splitting complete, incomplete and unreadable runs.

    Raises NoRunsFoundError when root contains no `result.json`.
    """
    result_files = find_result_files(root, exclude)
    if not result_files:
        raise NoRunsFoundError(
            f"no run folder found under {root}: a run folder contains {RESULT_FILE}, "
            f"as written by `cmml-bench run`"
        )

    collection = Collection(root=root)
    for result_path in result_files:
        try:
            run = load_run(result_path)
        except ValueError as error:
            collection.skipped.append((result_path, str(error)))
            continue

        if run.status == "complete":
            collection.complete.append(run)
        else:
            collection.incomplete.append(run)
    return collection


def effective_settings(run: RunRecord) -> list[tuple[str, str, str | None]]:
    """Return (stored setting, reported setting, warning) for each evaluated setting.

    A run that declares `uses_task_id_at_test` while reporting only a
    task-agnostic setting used the task id somewhere it claims not to, so its
    results are reported as task-aware.
    """
    settings = [str(setting) for setting in run.result.get("eval_settings") or []]
    uses_task_id = bool(run.result.get("uses_task_id_at_test", False))
    entries = []
    for setting in settings:
        if setting == "task_agnostic" and uses_task_id and "task_aware" not in settings:
            warning = (
                f"{run.method} seed {run.seed}: uses_task_id_at_test is true but the only "
                f"setting is task_agnostic, so its results are reported as task-aware"
            )
            entries.append((setting, "task_aware", warning))
        else:
            entries.append((setting, setting, None))
    return entries


def read_setting(run: RunRecord, setting: str) -> SettingResult:
    """Extract and check one setting's matrix, metrics and missing-type scores.

    Raises ValueError naming the run when the setting's matrix is absent or malformed.
    """
    matrices = run.result.get("matrix") or {}
    if setting not in matrices or matrices[setting] is None:
        raise ValueError(f"{run.path}: no matrix for setting {setting!r}")
    try:
        block = trained_block(matrices[setting])
        recomputed = summarize(block)
    except MatrixError as error:
        raise ValueError(f"{run.path}: {setting} matrix is malformed ({error})") from None

    breakdown_all = run.result.get("missing_breakdown") or {}
    breakdown = breakdown_all.get(setting) or {}
    return SettingResult(
        run=run,
        setting=setting,
        label=run.method,
        matrix=block,
        metrics=recomputed,
        missing_breakdown={name: breakdown.get(name) for name in MISSING_TYPES},
    )


def stored_metric_disagreements(item: SettingResult) -> list[str]:
    """List the stored metrics of a setting that differ from the recomputed ones."""
    stored = (item.run.result.get("metrics") or {}).get(item.setting) or {}
    messages = []
    for name, value in item.metrics.items():
        stored_value = stored.get(name)
        if stored_value is None or value is None:
            if (stored_value is None) != (value is None):
                messages.append(f"{name}: stored {stored_value}, recomputed {value}")
            continue
        if abs(float(stored_value) - value) > METRIC_AGREEMENT_TOLERANCE:
            messages.append(f"{name}: stored {float(stored_value):.4f}, recomputed {value:.4f}")
    return messages


def group_runs(collection: Collection) -> tuple[list[RunGroup], list[str]]:
    """Group the complete runs by GroupKey.

    Returns the groups (sorted by protocol, setting and identity) and the
    general warnings: runs left out, settings reported as task-aware, and why
    runs of one protocol were split into several groups.
    """
    warnings: list[str] = []
    items_by_key: dict[GroupKey, list[SettingResult]] = defaultdict(list)

    for run in collection.complete:
        for stored_setting, reported_setting, warning in effective_settings(run):
            if warning:
                warnings.append(warning)
            try:
                item = read_setting(run, stored_setting)
            except ValueError as error:
                warnings.append(f"left out: {error}")
                continue

            disagreements = stored_metric_disagreements(item)
            if disagreements:
                warnings.append(
                    f"{run.path}: stored {stored_setting} metrics differ from the matrix "
                    f"({'; '.join(disagreements)}); the report uses the values recomputed from the matrix"
                )
            identity = run.identity
            key = GroupKey(
                protocol=run.protocol,
                setting=reported_setting,
                protocol_hash=identity["protocol_hash"],
                class_order_hash=identity["class_order_hash"],
                backbone=identity["backbone"],
                subset=identity["subset"],
            )
            items_by_key[key].append(item)

    keys = sorted(items_by_key, key=lambda key: tuple(str(part) for part in _key_tuple(key)))
    groups = [_build_group(key, items_by_key[key], collection.root) for key in keys]
    warnings.extend(_split_explanations(keys))
    _assign_slugs(groups)
    return groups, warnings


def _key_tuple(key: GroupKey) -> tuple:
    return (key.protocol, key.setting, key.protocol_hash, key.class_order_hash, key.backbone, key.subset)


def _build_group(key: GroupKey, items: list[SettingResult], root: Path) -> RunGroup:
    group = RunGroup(key=key)
    _disambiguate_labels(items, root)

    for item in sorted(items, key=lambda entry: (entry.label, entry.run.seed, str(entry.run.path))):
        seeds = group.methods.setdefault(item.label, {})
        if item.run.seed in seeds:
            group.warnings.append(
                f"{item.label} seed {item.run.seed} appears twice ({seeds[item.run.seed].run.path} "
                f"and {item.run.path}), so only the first is used"
            )
            continue
        seeds[item.run.seed] = item

    _flag_inconsistent_lengths(group)
    return group


def _disambiguate_labels(items: list[SettingResult], root: Path) -> None:
    """Label a method by its folder when two of its runs in a group share a seed.

    This happens with runs written under different `--tag` or `--out` folders.
    """
    seen: dict[tuple[str, int], int] = defaultdict(int)
    for item in items:
        seen[(item.run.method, item.run.seed)] += 1
    duplicated = {method for (method, _), count in seen.items() if count > 1}

    for item in items:
        if item.run.method in duplicated:
            try:
                folder = item.run.path.parent.relative_to(root)
            except ValueError:
                folder = item.run.path.parent
            item.label = f"{item.run.method} ({folder.as_posix()})"


def _flag_inconsistent_lengths(group: RunGroup) -> None:
    lengths = {
        len(item.matrix) for seeds in group.methods.values() for item in seeds.values()
    }
    if len(lengths) > 1:
        group.warnings.append(
            f"runs in this group have different task counts {sorted(lengths)} "
            f"although their protocol hashes agree"
        )


def _split_explanations(keys: list[GroupKey]) -> list[str]:
    """Explain, per protocol and setting, which identity fields split its runs."""
    variants: dict[tuple[str, str], list[GroupKey]] = defaultdict(list)
    for key in keys:
        variants[(key.protocol, key.setting)].append(key)

    messages = []
    for (protocol, setting), group_keys in variants.items():
        if len(group_keys) < 2:
            continue
        differing = []
        for name in IDENTITY_FIELDS:
            values = sorted({str(getattr(key, name)) for key in group_keys})
            if len(values) > 1:
                differing.append(f"{name} ({', '.join(values)})")
        messages.append(
            f"{protocol}, {setting}: runs differ in {'; '.join(differing)}, so they form "
            f"{len(group_keys)} separate groups and are not pooled or ranked together"
        )
    return messages


def _assign_slugs(groups: list[RunGroup]) -> None:
    """Give each group a file-name prefix, unique, made from protocol and setting."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for group in groups:
        counts[(group.key.protocol, group.key.setting)] += 1

    for group in groups:
        base = f"{_safe_name(group.key.protocol)}__{group.key.setting}"
        if counts[(group.key.protocol, group.key.setting)] > 1:
            suffix = _safe_name(str(group.key.protocol_hash or "nohash"))[:8]
            base = f"{base}__{suffix}"
            if group.key.backbone is not None:
                base = f"{base}__{_safe_name(str(group.key.backbone))}"
            if group.key.subset is not None:
                base = f"{base}__subset{group.key.subset}"
        group.slug = base

    _make_unique([group for group in groups])


def _make_unique(groups: list[RunGroup]) -> None:
    used: dict[str, int] = defaultdict(int)
    for group in groups:
        used[group.slug] += 1
        if used[group.slug] > 1:
            group.slug = f"{group.slug}__{used[group.slug]}"


def _safe_name(text: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "-" for character in text)
