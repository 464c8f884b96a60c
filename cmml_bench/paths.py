"""Locations of the project's YAML folders, the data root and the cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DATA_ROOT_ENV = "CMML_BENCH_DATA"
CACHE_ENV = "CMML_BENCH_CACHE"


def protocol_dirs() -> list[Path]:
    """Return the folders searched for protocol YAML files, first match wins."""
    return _unique([Path.cwd() / "protocols", PROJECT_ROOT / "protocols"])


def method_dirs() -> list[Path]:
    """Return the folders searched for method YAML files, first match wins."""
    return _unique([Path.cwd() / "methods", PROJECT_ROOT / "methods"])


def _unique(folders: list[Path]) -> list[Path]:
    """Drop repeated folders (the working directory is often the project root)."""
    unique: list[Path] = []
    for folder in folders:
        if folder.resolve() not in [known.resolve() for known in unique]:
            unique.append(folder)
    return unique


def user_cache_dir() -> Path:
    """Return the per-user cache folder (XDG_CACHE_HOME or ~/.cache) for cmml-bench."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmml-bench"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """Return the data root: the override, else $CMML_BENCH_DATA, else <cache>/data."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return user_cache_dir() / "data"


def cache_dir() -> Path:
    """Return the folder for derived artefacts (feature caches, fitted projections)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return user_cache_dir() / "derived"
