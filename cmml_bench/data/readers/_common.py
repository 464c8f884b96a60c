"""Helpers shared by the dataset readers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cmml_bench.data.errors import SkipCounter
from cmml_bench.data.images import check_image

# A predicate on a label (None keeps every label). Readers leave out, without
# checking them, the samples none of whose labels it keeps.
LabelFilter = Callable[[str], bool] | None


def is_kept(labels: tuple[str, ...], keep_label: LabelFilter) -> bool:
    return keep_label is None or any(keep_label(label) for label in labels)


def image_is_valid(path: Path, skips: SkipCounter, fix: str) -> bool:
    """Check an image with Pillow; record an invalid sample and return False when it fails."""
    problem = check_image(path)
    if problem is None:
        return True
    reason = "missing_image" if problem == "missing file" else "unreadable_image"
    skips.invalid(reason, f"{problem}: {path}; {fix}")
    return False


def clean_text(text: str) -> str:
    """Collapse runs of whitespace (including newlines) to single spaces."""
    return " ".join(text.split())


def decode_text(data: bytes, path: Path, skips: SkipCounter, fix: str) -> str | None:
    """Decode UTF-8 text; record an invalid sample and return None when it fails or is empty."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        skips.invalid("undecodable_text", f"text of {path} is not UTF-8 ({error}); {fix}")
        return None
    if not text.strip():
        skips.invalid("empty_text", f"text of {path} is empty; {fix}")
        return None
    return text
