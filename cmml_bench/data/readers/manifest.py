"""Reader for a user's dataset described by a JSON-lines manifest.

Each line is an object with `image` (a path relative to the manifest file, or
absolute), `text`, `label` (a string) or `labels` (a list of strings), `split`
(`train` or `test`) and an optional `id` (default: `line<N>`).
"""

from __future__ import annotations

import json
from pathlib import Path

from cmml_bench.data.errors import DataError, ReadResult, SkipCounter
from cmml_bench.data.readers._common import LabelFilter, clean_text, image_is_valid, is_kept
from cmml_bench.data.types import SPLITS, Sample

MANIFEST_NAME = "manifest.jsonl"
KEYS = ("id", "image", "text", "label", "labels", "split")
LAYOUT = (
    f"a JSON-lines file (or a folder with {MANIFEST_NAME}) whose lines hold "
    "image, text, label or labels, split (train/test) and optional id"
)


def manifest_path(root: Path) -> Path:
    return root / MANIFEST_NAME if root.is_dir() else root


def read_manifest(
    root: Path, *, multi_label: bool = False, skip_invalid: bool = False, keep_label: LabelFilter = None
) -> ReadResult:
    """Read a manifest; a single-label protocol rejects lines with more than one label."""
    path = manifest_path(root)
    if not path.is_file():
        raise DataError(f"manifest {path} not found; expected {LAYOUT}")

    skips = SkipCounter(skip_invalid)
    samples: list[Sample] = []
    seen: set[str] = set()
    for number, raw_line in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw_line.strip():
            continue
        sample = _read_line(path, number, raw_line, multi_label, keep_label, skips)
        if sample is None:
            continue
        if sample.sample_id in seen:
            skips.invalid("duplicate_id", f"{path}, line {number}: id {sample.sample_id!r} is used twice; give each line its own id")
            continue
        seen.add(sample.sample_id)
        samples.append(sample)
    return ReadResult(samples=samples, skipped=skips.counts)


def _read_line(
    path: Path, number: int, raw_line: bytes, multi_label: bool, keep_label: LabelFilter, skips: SkipCounter
) -> Sample | None:
    where = f"{path}, line {number}"
    try:
        record = json.loads(raw_line.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        skips.invalid("invalid_line", f"{where}: not a UTF-8 JSON object ({error}); fix the line")
        return None
    if not isinstance(record, dict):
        skips.invalid("invalid_line", f"{where}: expected a JSON object; fix the line")
        return None
    unknown = sorted(set(record) - set(KEYS))
    if unknown:
        skips.invalid("invalid_line", f"{where}: unknown keys {', '.join(unknown)}; allowed keys: {', '.join(KEYS)}")
        return None

    labels = _labels(record, where, multi_label, skips)
    if labels is None:
        return None
    if not is_kept(labels, keep_label):
        if multi_label:
            skips.count("no_used_label")
        return None
    split = record.get("split")
    if split not in SPLITS:
        skips.invalid("invalid_split", f"{where}: split must be 'train' or 'test', got {split!r}; fix the line")
        return None
    text = record.get("text")
    if not isinstance(text, str) or not clean_text(text):
        skips.invalid("empty_text", f"{where}: `text` is missing or empty; fix the line")
        return None
    image = record.get("image")
    if not isinstance(image, str) or not image:
        skips.invalid("missing_image", f"{where}: `image` must be a path; fix the line")
        return None
    image_path = (path.parent / image).resolve()
    if not image_is_valid(image_path, skips, f"fix line {number} of {path}"):
        return None

    sample_id = str(record.get("id", f"line{number}"))
    return Sample(sample_id=sample_id, image_path=image_path, text=clean_text(text), labels=labels, split=split)


def _labels(record: dict, where: str, multi_label: bool, skips: SkipCounter) -> tuple[str, ...] | None:
    if ("label" in record) == ("labels" in record):
        skips.invalid("invalid_labels", f"{where}: give exactly one of `label` and `labels`; fix the line")
        return None
    value = record["labels"] if "labels" in record else [record["label"]]
    if not isinstance(value, list) or not value or not all(isinstance(label, str) and label for label in value):
        skips.invalid("invalid_labels", f"{where}: labels must be non-empty strings; fix the line")
        return None
    labels = tuple(dict.fromkeys(value))
    if len(labels) > 1 and not multi_label:
        skips.invalid(
            "invalid_labels", f"{where}: {len(labels)} labels in a single-label protocol; set `multi_label: true` in the protocol"
        )
        return None
    return labels
