"""Reader for the Tux Paint stamps of the Debian package `tuxpaint-stamps-default`.

Layout after `cmml-bench data prepare tuxpaint` (the package extracted into
`<data root>/tuxpaint`): `usr/share/tuxpaint/stamps/<category>/<subcategory>/.../NAME.png`
beside `NAME.txt`. The first line of the text file is the English caption
("A badger."), the later lines are translations (`xx.utf8=...`) and are not used.
"""

from __future__ import annotations

from pathlib import Path

from cmml_bench.data.errors import DataError, ReadResult, SkipCounter
from cmml_bench.data.readers._common import LabelFilter, clean_text, decode_text, image_is_valid, is_kept
from cmml_bench.data.types import Sample

STAMPS_DIR = Path("usr/share/tuxpaint/stamps")
PREPARE_HINT = "run `cmml-bench data prepare tuxpaint`"

# Tux Paint shows `NAME_mirror.png` / `NAME_flip.png` when a stamp is mirrored
# or flipped; they are variants of a stamp, not stamps.
VARIANT_SUFFIXES = ("_mirror", "_flip")


def stamps_dir(root: Path) -> Path:
    return root / STAMPS_DIR


def read_tuxpaint(
    root: Path, *, label_depth: int = 2, skip_invalid: bool = False, keep_label: LabelFilter = None
) -> ReadResult:
    """Read every PNG stamp with its English caption; the label is the folder path cut to `label_depth`.

    A stamp directly inside a top-level folder (for example `clothes/bowtie.png`)
    is labelled with that folder alone. Stamps that exist only as SVG are
    skipped and counted as `svg_only`, and a text file without any image as
    `text_without_image`: both are how the package is built, not errors.
    """
    base = stamps_dir(root)
    if not base.is_dir():
        raise DataError(f"tuxpaint stamps not found: {base} does not exist; {PREPARE_HINT}")

    skips = SkipCounter(skip_invalid)
    samples = []
    for stem in _stamp_stems(base, skips):
        label = label_of(stem.parent.relative_to(base), label_depth)
        if not is_kept((label,), keep_label):
            continue
        sample = _read_stamp(base, stem, label, skips)
        if sample is not None:
            samples.append(sample)
    return ReadResult(samples=samples, skipped=skips.counts)


def label_of(folder: Path, depth: int) -> str:
    """Return the first `depth` parts of a stamp's folder, joined by '/'."""
    return "/".join(folder.parts[:depth])


def _stamp_stems(base: Path, skips: SkipCounter) -> list[Path]:
    """Return the path without suffix of every PNG stamp, counting SVG-only stamps and orphan texts."""
    stems = []
    images = {path.with_suffix("") for suffix in ("*.png", "*.svg") for path in base.rglob(suffix)}
    for stem in sorted(images):
        if stem.name.endswith(VARIANT_SUFFIXES):
            continue
        if stem.parent == base:
            skips.count("no_category")
            continue
        if stem.with_suffix(".png").is_file():
            stems.append(stem)
        else:
            skips.count("svg_only")

    for text_file in base.rglob("*.txt"):
        if text_file.with_suffix("") not in images:
            skips.count("text_without_image")
    return stems


def _read_stamp(base: Path, stem: Path, label: str, skips: SkipCounter) -> Sample | None:
    image_path = stem.with_suffix(".png")
    text_path = stem.with_suffix(".txt")
    fix = f"restore the file from the package ({PREPARE_HINT} again after deleting {base.parents[3]})"

    if not text_path.is_file():
        skips.invalid("missing_text", f"caption file {text_path} not found for stamp {image_path}; {fix}")
        return None
    text = decode_text(text_path.read_bytes(), text_path, skips, fix)
    if text is None:
        return None
    caption = clean_text(text.splitlines()[0])
    if not caption:
        skips.invalid("empty_text", f"the first line (English caption) of {text_path} is empty; {fix}")
        return None
    if not image_is_valid(image_path, skips, fix):
        return None

    sample_id = stem.relative_to(base).as_posix()
    return Sample(sample_id=sample_id, image_path=image_path, text=caption, labels=(label,), split="")
