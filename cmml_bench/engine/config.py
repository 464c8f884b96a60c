"""The resolved configuration of one run, and `--set key=value` overrides."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from cmml_bench.methods import MethodConfig

# Sections that `--set` may change. `backbone` options go to `build_backbone`.
OVERRIDE_SECTIONS = ("train", "eval", "method", "backbone")


class ConfigError(ValueError):
    """An invalid `--set` override, or a stored run whose configuration differs."""


@dataclass
class RunSettings:
    """Method settings after overrides, plus the backbone options."""

    method: MethodConfig
    backbone_options: dict[str, Any] = field(default_factory=dict)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key.sub=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"invalid --set {text!r}: expected KEY=VALUE, for example train.epochs=2")
    key, raw_value = text.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"invalid --set key {key!r}: expected SECTION.KEY with SECTION one of {', '.join(OVERRIDE_SECTIONS)}"
        )
    if parts[0] not in OVERRIDE_SECTIONS:
        raise ConfigError(
            f"unknown --set section {parts[0]!r} in {text!r}; allowed sections: {', '.join(OVERRIDE_SECTIONS)}"
        )
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid --set value in {text!r}: {error}") from error
    return parts, _number_or_value(value)


def _number_or_value(value: Any) -> Any:
    """Return a float for strings like ``2e-3``, which YAML 1.1 reads as text."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def apply_overrides(method: MethodConfig, overrides: list[str]) -> RunSettings:
    """Return a copy of the method settings with every ``--set`` override applied."""
    resolved = copy.deepcopy(method)
    sections = {
        "train": resolved.train,
        "eval": resolved.eval,
        "method": resolved.method,
        "backbone": {},
    }
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(sections[parts[0]], parts[1:], value, text)
    return RunSettings(method=resolved, backbone_options=sections["backbone"])


def _set_path(target: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    for key in keys[:-1]:
        child = target.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {text!r}: {key!r} is {child!r}, not a mapping")
        target = child
    target[keys[-1]] = value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to ``{"a.b.c": leaf}`` for comparison."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, child in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(child, name))
    if not value and prefix:
        flat[prefix] = {}
    return flat


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """Return (dotted key, stored value, current value) of the first difference, or None."""
    stored_flat = flatten(stored)
    current_flat = flatten(current)
    for key in sorted(set(stored_flat) | set(current_flat)):
        before = stored_flat.get(key, "<absent>")
        after = current_flat.get(key, "<absent>")
        if before != after:
            return key, before, after
    return None
