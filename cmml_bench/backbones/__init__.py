"""Backbone registry: name -> builder, chosen with `--backbone`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cmml_bench.backbones.base import Backbone


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: where its builder lives and what it is."""

    module: str
    builder: str
    description: str


BACKBONES: dict[str, BackboneEntry] = {
    "vilt": BackboneEntry(
        "cmml_bench.backbones.vilt",
        "build_vilt",
        "pretrained ViLT-B/32 from a hub id or local folder (set backbone.source)",
    ),
    "vilt-tiny": BackboneEntry(
        "cmml_bench.backbones.vilt",
        "build_vilt_tiny",
        "tiny randomly initialised ViLT (2 layers, width 32) for code-path tests",
    ),
    "minilm-mobilenet": BackboneEntry(
        "cmml_bench.backbones.minilm_mobilenet",
        "build_minilm_mobilenet",
        "offline: pretrained MiniLM fusion encoder over text and projected frozen MobileNetV2 image tokens",
    ),
}


def list_backbones() -> list[tuple[str, str]]:
    """Return (name, one-line description) for every registered backbone."""
    return [(name, entry.description) for name, entry in sorted(BACKBONES.items())]


def build_backbone(name: str, max_text_length: int, options: dict | None = None) -> Backbone:
    """Build the backbone registered as ``name`` with its options (frozen, on CPU)."""
    if name not in BACKBONES:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone {name!r}; choose one of: {known}")
    entry = BACKBONES[name]
    builder = getattr(importlib.import_module(entry.module), entry.builder)
    return builder(max_text_length, dict(options or {}))
