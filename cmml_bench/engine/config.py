"""The resolved configuration of one run, and `--set key=value` overrides."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from cmml_bench.methods import MethodConfig, known_method_options

# Sections that `--set` may change. `backbone` options go to `build_backbone`.
OVERRIDE_SECTIONS = ("train", "eval", "method", "backbone")

# Settings the runner reads from `train` and `eval`, with their expected types.
TRAIN_TYPES: dict[str, tuple[type, ...]] = {
    "epochs": (int,),
    "batch_size": (int,),
    "lr": (int, float),
    "weight_decay": (int, float),
    "warmup_ratio": (int, float),
    "betas": (list,),
    "max_grad_norm": (int, float, type(None)),
    "num_workers": (int,),
}
EVAL_TYPES: dict[str, tuple[type, ...]] = {"batch_size": (int,)}


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
    method_options = known_method_options(method)
    for text in overrides:
        parts, value = parse_override(text)
        _check_override(parts, value, text, method, method_options)
        _set_path(sections[parts[0]], parts[1:], value, text)
    return RunSettings(method=resolved, backbone_options=sections["backbone"])


def _check_override(parts: list[str], value: Any, text: str, method: MethodConfig, options: set[str]) -> None:
    """Reject misspelled keys and values of the wrong type before any work starts."""
    section, key = parts[0], parts[1]
    if section in ("train", "eval"):
        types = TRAIN_TYPES if section == "train" else EVAL_TYPES
        if key not in types or len(parts) != 2:
            dotted = ".".join(parts)
            raise ConfigError(
                f"unknown --set key {dotted!r} in {text!r}; known {section} keys: {', '.join(sorted(types))}"
            )
        is_bool = isinstance(value, bool)
        if is_bool or not isinstance(value, types[key]):
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in types[key])
            raise ConfigError(f"invalid --set value in {text!r}: {section}.{key} must be {expected}, got {value!r}")
        minimum = 0 if key == "num_workers" else 1
        if types[key] == (int,) and value < minimum:
            raise ConfigError(f"invalid --set value in {text!r}: {section}.{key} must be at least {minimum}")

    if section == "method" and key not in options:
        known = ", ".join(sorted(options)) or "none"
        raise ConfigError(
            f"unknown method option {key!r} in {text!r} for implementation {method.implementation!r}; "
            f"known options: {known}. Options are the keys under `method:` in the method YAML files."
        )


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
