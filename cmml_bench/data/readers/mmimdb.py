"""Reader for MM-IMDb in its raw layout.

Expected under the protocol's root: `images/<id>.jpeg`, `labels/<id>.json`
(keys `plot`, a list of strings, and `genres`, a list of genre names) and
`split.json` (keys `train`, `dev`, `test`: lists of ids). Only `train` and
`test` are read: the dev split is neither trained on nor evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmml_bench.data.errors import DataError, ReadResult, SkipCounter
from cmml_bench.data.readers._common import LabelFilter, clean_text, image_is_valid, is_kept
from cmml_bench.data.types import SPLITS, Sample

LAYOUT = "images/<id>.jpeg, labels/<id>.json (plot, genres) and split.json (train, dev, test)"


def read_mmimdb(root: Path, *, skip_invalid: bool = False, keep_label: LabelFilter = None) -> ReadResult:
    """Read the train and test movies: text is the first plot summary, labels are the genres.

    A movie none of whose genres passes `keep_label` is not checked and is counted
    as `no_used_label`.

    NOTE: a movie may have several plot summaries; only the first is used, so
    the text does not depend on a random choice.
    """
    split_ids = _read_split(root)
    skips = SkipCounter(skip_invalid)
    samples: list[Sample] = []
    seen: set[str] = set()
    for split in SPLITS:
        for movie_id in split_ids[split]:
            movie_id = str(movie_id)
            if movie_id in seen:
                skips.count("duplicate_id")
                continue
            seen.add(movie_id)
            sample = _read_movie(root, movie_id, split, keep_label, skips)
            if sample is not None:
                samples.append(sample)
    return ReadResult(samples=samples, skipped=skips.counts)


def _read_split(root: Path) -> dict[str, list]:
    path = root / "split.json"
    if not path.is_file():
        raise DataError(f"MM-IMDb split file {path} not found; expected the raw layout {LAYOUT} under {root}")
    try:
        split_ids = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); restore it from the dataset") from error
    for split in SPLITS:
        if not isinstance(split_ids, dict) or not isinstance(split_ids.get(split), list):
            raise DataError(f"{path} has no list under key {split!r}; restore it from the dataset")
    return split_ids


def _read_movie(root: Path, movie_id: str, split: str, keep_label: LabelFilter, skips: SkipCounter) -> Sample | None:
    label_path = root / "labels" / f"{movie_id}.json"
    fix = f"restore the file or remove id {movie_id} from split.json"
    if not label_path.is_file():
        skips.invalid("missing_text", f"label file {label_path} not found; {fix}")
        return None
    try:
        record = json.loads(label_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        skips.invalid("undecodable_text", f"{label_path} is not valid UTF-8 JSON ({error}); {fix}")
        return None

    genres = record.get("genres") if isinstance(record, dict) else None
    if not isinstance(genres, list) or not all(isinstance(genre, str) for genre in genres) or not genres:
        skips.invalid("invalid_labels", f"{label_path}: `genres` must be a non-empty list of strings; {fix}")
        return None
    labels = tuple(dict.fromkeys(genres))
    if not is_kept(labels, keep_label):
        skips.count("no_used_label")
        return None

    plots = record.get("plot")
    text = clean_text(plots[0]) if isinstance(plots, list) and plots and isinstance(plots[0], str) else ""
    if not text:
        skips.invalid("empty_text", f"{label_path}: `plot` is missing or empty; {fix}")
        return None

    image_path = root / "images" / f"{movie_id}.jpeg"
    if not image_is_valid(image_path, skips, fix):
        return None
    return Sample(sample_id=movie_id, image_path=image_path, text=text, labels=labels, split=split)
