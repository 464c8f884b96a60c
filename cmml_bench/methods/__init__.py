"""Method registry: YAML files in `methods/` name an implementation module.

A method YAML file looks like::

    implementation: delo          # module cmml_bench/methods/delo.py
    description: one line shown by `cmml-bench list`
    train: {epochs: 3, batch_size: 16, lr: 1.0e-4, weight_decay: 0.01,
            warmup_ratio: 0.1, betas: [0.9, 0.98]}
    eval: {batch_size: 64}
    method: {...}                 # options read by the implementation

Several YAML files may share one implementation (tuned variants or
ablations). The implementation module defines one ``Method`` subclass whose
``key`` equals the module name.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmml_bench.methods.base import Method
from cmml_bench.paths import method_dirs

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 16,
    "lr": 1.0e-4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "betas": [0.9, 0.98],
    "max_grad_norm": 1.0,
}
EVAL_DEFAULTS: dict[str, Any] = {"batch_size": 64}
TOP_LEVEL_KEYS = {"implementation", "description", "train", "eval", "method"}


class MethodConfigError(ValueError):
    """A method YAML file is missing, malformed or names an unknown implementation."""


@dataclass
class MethodConfig:
    """A resolved method YAML file."""

    name: str
    implementation: str
    description: str
    path: Path | None
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "implementation": self.implementation,
            "description": self.description,
            "train": copy.deepcopy(self.train),
            "eval": copy.deepcopy(self.eval),
            "method": copy.deepcopy(self.method),
        }


def find_method_file(name_or_path: str) -> Path:
    """Return the YAML file for a method name or path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise MethodConfigError(f"method file {candidate} not found")
        return candidate

    for folder in method_dirs():
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path

    known = ", ".join(name for name, _ in list_methods()) or "none"
    raise MethodConfigError(
        f"unknown method {name_or_path!r}; known methods: {known}. "
        "Pass a YAML path to use your own method file."
    )


def load_method_config(name_or_path: str) -> MethodConfig:
    """Load and validate a method YAML file by name or path."""
    path = find_method_file(name_or_path)
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MethodConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(content, dict):
        raise MethodConfigError(f"{path}: expected a mapping at the top level")

    unknown = set(content) - TOP_LEVEL_KEYS
    if unknown:
        raise MethodConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    if "implementation" not in content:
        raise MethodConfigError(f"{path}: missing key 'implementation' (the module name in cmml_bench/methods/)")

    for section in ("train", "eval", "method"):
        if not isinstance(content.get(section, {}), dict):
            raise MethodConfigError(f"{path}: '{section}' must be a mapping of settings")

    config = MethodConfig(
        name=path.stem,
        implementation=str(content["implementation"]),
        description=str(content.get("description", "")),
        path=path,
        train={**TRAIN_DEFAULTS, **content.get("train", {})},
        eval={**EVAL_DEFAULTS, **content.get("eval", {})},
        method=dict(content.get("method", {})),
    )
    method_class(config.implementation, source=path)
    return config


def method_class(implementation: str, source: Path | None = None) -> type[Method]:
    """Import ``cmml_bench.methods.<implementation>`` and return its Method subclass."""
    where = f"{source}: " if source else ""
    try:
        module = importlib.import_module(f"cmml_bench.methods.{implementation}")
    except ModuleNotFoundError as error:
        if error.name != f"cmml_bench.methods.{implementation}":
            raise
        raise MethodConfigError(
            f"{where}implementation {implementation!r} not found; expected cmml_bench/methods/{implementation}.py"
        ) from error

    for _, value in inspect.getmembers(module, inspect.isclass):
        if issubclass(value, Method) and value.key == implementation:
            return value
    raise MethodConfigError(f"{where}cmml_bench/methods/{implementation}.py defines no Method with key {implementation!r}")


def known_method_options(config: MethodConfig) -> set[str]:
    """Return the option names that the YAML files of ``config``'s implementation declare.

    The set covers ``config`` itself and every method file that names the same
    implementation, so an ablation key listed only in a variant's file (for
    example ``oracle_task_id``) is still accepted by ``--set``.
    """
    options = set(config.method)
    for folder in method_dirs():
        if not folder.is_dir():
            continue
        for path in folder.glob("*.yaml"):
            try:
                content = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
            if isinstance(content, dict) and content.get("implementation") == config.implementation:
                options.update((content.get("method") or {}).keys())
    return options


def list_methods() -> list[tuple[str, str]]:
    """Return (name, description) of every method YAML file, first folder wins."""
    found: dict[str, str] = {}
    for folder in method_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in found:
                continue
            try:
                content = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                content = {}
            found[path.stem] = str(content.get("description", "")) if isinstance(content, dict) else ""
    return sorted(found.items())
