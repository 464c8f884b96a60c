"""Reader for openclipart from the Debian packages `openclipart-png` and `openclipart-svg`.

Layout after `cmml-bench data prepare clipart` (both packages extracted into
`<data root>/clipart`): `usr/share/openclipart/png/<folder>/.../NAME.png` and
the matching `usr/share/openclipart/svg/<folder>/.../NAME.svg`. The text is
the SVG's `dc:title` and `dc:description` of the `cc:Work` metadata only:
keywords (`dc:subject`) and folder names repeat the label and would leak it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from cmml_bench.data.errors import DataError, ReadResult, SkipCounter
from cmml_bench.data.readers._common import LabelFilter, clean_text, image_is_valid, is_kept
from cmml_bench.data.readers.tuxpaint import label_of
from cmml_bench.data.types import Sample

PNG_DIR = Path("usr/share/openclipart/png")
SVG_DIR = Path("usr/share/openclipart/svg")
PREPARE_HINT = "run `cmml-bench data prepare clipart`"
NAMESPACES = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
}


def read_clipart(
    root: Path, *, label_depth: int = 2, skip_invalid: bool = False, keep_label: LabelFilter = None
) -> ReadResult:
    """Read every PNG with the title and description of its SVG; the label is the folder path.

    Always skipped and counted, because the package is built that way:
    `duplicate_link` (a PNG that is a symlink to an image filed in another
    folder) and `no_metadata_text` (an SVG with neither title nor description,
    so the pair has no text).
    """
    png_base, svg_base = root / PNG_DIR, root / SVG_DIR
    for folder in (png_base, svg_base):
        if not folder.is_dir():
            raise DataError(f"openclipart data not found: {folder} does not exist; {PREPARE_HINT}")

    skips = SkipCounter(skip_invalid)
    samples = []
    for image_path in sorted(png_base.rglob("*.png")):
        relative = image_path.relative_to(png_base)
        label = label_of(relative.parent, label_depth)
        if image_path.is_symlink():
            skips.count("duplicate_link")
            continue
        if not is_kept((label,), keep_label):
            continue
        sample = _read_image(image_path, svg_base / relative.with_suffix(".svg"), relative, label, skips)
        if sample is not None:
            samples.append(sample)
    return ReadResult(samples=samples, skipped=skips.counts)


def svg_text(svg_path: Path) -> str:
    """Return the title and description of an SVG's `cc:Work` metadata ('' when both are absent).

    Raises ET.ParseError for malformed XML and OSError for an unreadable file.
    """
    work = ET.parse(svg_path).getroot().find(".//cc:Work", NAMESPACES)
    if work is None:
        return ""
    title = clean_text(work.findtext("dc:title", default="", namespaces=NAMESPACES) or "")
    description = clean_text(work.findtext("dc:description", default="", namespaces=NAMESPACES) or "")
    parts = [title] if title else []
    if description and description != title:
        parts.append(description)
    return " ".join(parts)


def _read_image(image_path: Path, svg_path: Path, relative: Path, label: str, skips: SkipCounter) -> Sample | None:
    fix = f"restore the file from the package ({PREPARE_HINT} again after deleting the clipart folder)"
    if not svg_path.is_file():
        skips.invalid("missing_text", f"SVG {svg_path} with the text of {image_path} not found; {fix}")
        return None
    try:
        text = svg_text(svg_path)
    except (ET.ParseError, UnicodeDecodeError, ValueError) as error:
        skips.invalid("undecodable_text", f"cannot parse the metadata of {svg_path} ({error}); {fix}")
        return None
    if not text:
        skips.count("no_metadata_text")
        return None
    if not image_is_valid(image_path, skips, fix):
        return None

    sample_id = relative.with_suffix("").as_posix()
    return Sample(sample_id=sample_id, image_path=image_path, text=text, labels=(label,), split="")
