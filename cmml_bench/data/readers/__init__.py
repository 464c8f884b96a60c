"""Dataset readers: each turns a raw layout into `Sample`s plus counts of skipped items."""

from __future__ import annotations

from pathlib import Path

from cmml_bench.data.errors import ReadResult
from cmml_bench.data.readers._common import LabelFilter
from cmml_bench.data.readers.clipart import read_clipart
from cmml_bench.data.readers.food101 import read_food101
from cmml_bench.data.readers.manifest import read_manifest
from cmml_bench.data.readers.mmimdb import read_mmimdb
from cmml_bench.data.readers.tuxpaint import read_tuxpaint


def read_dataset(
    dataset: str,
    root: Path,
    *,
    skip_invalid: bool = False,
    label_depth: int | None = None,
    multi_label: bool = False,
    keep_label: LabelFilter = None,
) -> ReadResult:
    """Read one of the protocol datasets from its folder (or manifest file)."""
    if dataset == "tuxpaint":
        return read_tuxpaint(root, label_depth=label_depth or 2, skip_invalid=skip_invalid, keep_label=keep_label)
    if dataset == "clipart":
        return read_clipart(root, label_depth=label_depth or 2, skip_invalid=skip_invalid, keep_label=keep_label)
    if dataset == "food101":
        return read_food101(root, skip_invalid=skip_invalid, keep_label=keep_label)
    if dataset == "mmimdb":
        return read_mmimdb(root, skip_invalid=skip_invalid, keep_label=keep_label)
    if dataset == "manifest":
        return read_manifest(root, multi_label=multi_label, skip_invalid=skip_invalid, keep_label=keep_label)
    raise ValueError(f"unknown dataset {dataset!r}")
