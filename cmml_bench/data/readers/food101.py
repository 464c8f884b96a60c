"""Reader for UPMC Food-101 in its raw layout.

Expected under the protocol's root:
`images/{train,test}/<class>/<class>_<n>.jpg`, `texts/{train,test}_titles.csv`
(rows: image file name, text, class; no header) and `class_idx.json`
(class name -> index). The dataset's own train/test split is used.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cmml_bench.data.errors import DataError, ReadResult, SkipCounter
from cmml_bench.data.readers._common import LabelFilter, clean_text, image_is_valid, is_kept
from cmml_bench.data.types import SPLITS, Sample

LAYOUT = (
    "images/{train,test}/<class>/<class>_<n>.jpg, texts/{train,test}_titles.csv "
    "(image file name, text, class) and class_idx.json"
)


def read_food101(root: Path, *, skip_invalid: bool = False, keep_label: LabelFilter = None) -> ReadResult:
    """Read the train and test rows of UPMC Food-101. Every class must be listed in class_idx.json.

    NOTE: every image is opened and verified with Pillow on every call, and
    nothing is cached, so a full read of the roughly 90,000 images is slow.
    """
    classes = _read_class_index(root)
    skips = SkipCounter(skip_invalid)
    samples: list[Sample] = []
    seen: set[str] = set()
    for split in SPLITS:
        csv_path = root / "texts" / f"{split}_titles.csv"
        if not csv_path.is_file():
            raise DataError(f"Food-101 text file {csv_path} not found; expected the raw layout {LAYOUT}")
        for line, row in _read_rows(csv_path):
            sample = _read_row(root, split, csv_path, line, row, classes, keep_label, skips)
            if sample is None:
                continue
            if sample.sample_id in seen:
                skips.count("duplicate_row")
                continue
            seen.add(sample.sample_id)
            samples.append(sample)
    return ReadResult(samples=samples, skipped=skips.counts)


def _read_class_index(root: Path) -> set[str]:
    path = root / "class_idx.json"
    if not path.is_file():
        raise DataError(f"Food-101 class index {path} not found; expected the raw layout {LAYOUT} under {root}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); restore it from the dataset") from error
    if not isinstance(index, dict) or not index:
        raise DataError(f"{path} must map class names to indices; restore it from the dataset")
    return set(index)


def _read_rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    """Return (line number, fields) for each CSV row; undecodable bytes survive as surrogates."""
    text = csv_path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text))
    return [(reader.line_num, row) for row in reader if row]


def _read_row(
    root: Path,
    split: str,
    csv_path: Path,
    line: int,
    row: list[str],
    classes: set[str],
    keep_label: LabelFilter,
    skips: SkipCounter,
) -> Sample | None:
    where = f"{csv_path}, line {line}"
    fix = "fix or remove the row"
    if len(row) != 3:
        skips.invalid("invalid_row", f"{where}: expected 3 fields (image, text, class), got {len(row)}; {fix}")
        return None

    file_name, text, label = row
    if not is_kept((label,), keep_label):
        return None
    if label not in classes:
        skips.invalid("unknown_label", f"{where}: class {label!r} is not in class_idx.json; {fix}")
        return None
    if any("\udc80" <= char <= "\udcff" for char in text):
        skips.invalid("undecodable_text", f"{where}: the text is not UTF-8; {fix}")
        return None
    text = clean_text(text)
    if not text:
        skips.invalid("empty_text", f"{where}: the text of {file_name} is empty; {fix}")
        return None

    image_path = root / "images" / split / label / file_name
    if not image_is_valid(image_path, skips, f"restore the image or remove row {line} of {csv_path}"):
        return None
    return Sample(sample_id=f"{split}/{file_name}", image_path=image_path, text=text, labels=(label,), split=split)
