"""Compare a run's metrics with a stored reference file (regression check).

A reference is a small JSON object:

    {"schema_version": 1, "protocol": ..., "method": ..., "seed": ..., "backbone": ...,
     "subset": ..., "settings": {"task_agnostic": {"ap": ..., "forgetting": ..., ...}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmml_bench.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from cmml_bench.report.collect import RESULT_FILE, load_run

REFERENCE_SCHEMA_VERSION = 1
IDENTITY_KEYS = ("protocol", "method", "backbone", "subset")


class ReferenceMismatch(Exception):
    """The run and the reference describe different experiments, or a file is unusable."""


@dataclass
class MetricCheck:
    """One metric of one setting, compared with the reference."""

    setting: str
    metric: str
    reference: float | None
    value: float | None
    gap: float | None
    worse_by: float | None
    passed: bool
    note: str = ""


def load_result(run_path: Path) -> dict[str, Any]:
    """Load result.json from a run folder (or the file itself). Raises ReferenceMismatch when unusable."""
    result_path = run_path / RESULT_FILE if run_path.is_dir() else run_path
    try:
        return load_run(result_path).result
    except ValueError as error:
        raise ReferenceMismatch(str(error)) from None


def run_identity(result: dict[str, Any]) -> dict[str, Any]:
    identity = result.get("identity") or {}
    return {
        "protocol": result.get("protocol"),
        "method": result.get("method"),
        "seed": result.get("seed"),
        "backbone": identity.get("backbone") or result.get("backbone"),
        "subset": identity.get("subset"),
    }


def build_reference(result: dict[str, Any]) -> dict[str, Any]:
    """Build a reference from a complete run's stored metrics."""
    if result.get("status") != "complete":
        raise ReferenceMismatch(
            f"the run is {result.get('status')!r}, but a reference must come from a complete run"
        )
    metrics = result.get("metrics") or {}
    settings = {}
    for setting in result.get("eval_settings") or []:
        stored = metrics.get(setting) or {}
        settings[setting] = {name: stored.get(name) for name in METRIC_NAMES}
    return {"schema_version": REFERENCE_SCHEMA_VERSION, **run_identity(result), "settings": settings}


def load_reference(path: Path) -> dict[str, Any]:
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReferenceMismatch(f"reference {path} cannot be read as JSON ({error})") from None
    if not isinstance(reference, dict) or not isinstance(reference.get("settings"), dict):
        raise ReferenceMismatch(f"reference {path} has no 'settings' object. Write one with --write-reference")
    return reference


def identity_mismatches(result: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """List the identity fields (protocol, method, backbone, subset) that differ."""
    identity = run_identity(result)
    return [
        f"{key}: run {identity[key]!r}, reference {reference.get(key)!r}"
        for key in IDENTITY_KEYS
        if identity[key] != reference.get(key)
    ]


def check_metrics(result: dict[str, Any], reference: dict[str, Any], tolerance: float) -> list[MetricCheck]:
    """Compare each metric of the reference with the run.

    A metric fails when it is worse by more than `tolerance` points: lower for
    ap, aia, last and bwt, higher for forgetting and forgetting_max. A metric
    present in the reference but missing from the run fails too. Metrics that
    are null in the reference are not checked.
    """
    run_metrics = result.get("metrics") or {}
    checks = []
    for setting, expected in sorted(reference["settings"].items()):
        actual = run_metrics.get(setting)
        for metric in METRIC_NAMES:
            reference_value = (expected or {}).get(metric)
            if reference_value is None:
                continue
            value = None if actual is None else actual.get(metric)
            checks.append(_check_one(setting, metric, float(reference_value), value, tolerance))
    return checks


def _check_one(setting: str, metric: str, reference: float, value: Any, tolerance: float) -> MetricCheck:
    if value is None:
        return MetricCheck(setting, metric, reference, None, None, None, False, "missing from the run")

    value = float(value)
    gap = value - reference
    worse_by = -gap if HIGHER_IS_BETTER[metric] else gap
    passed = worse_by <= tolerance
    return MetricCheck(setting, metric, reference, value, gap, worse_by, passed)


def format_check(check: MetricCheck, tolerance: float) -> str:
    """Format one metric as a line with its name, both values, the gap and the verdict."""
    name = f"{check.setting}/{check.metric}"
    if check.value is None:
        return f"FAIL  {name}: reference {check.reference:.2f}, {check.note}"
    direction = "higher is better" if HIGHER_IS_BETTER[check.metric] else "lower is better"
    line = f"{name}: run {check.value:.2f}, reference {check.reference:.2f}, gap {check.gap:+.2f} ({direction})"
    if check.passed:
        return f"ok    {line}"
    return f"FAIL  {line}: worse by {check.worse_by:.2f} > tolerance {tolerance:.2f}"
