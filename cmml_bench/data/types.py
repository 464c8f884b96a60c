"""Data types shared by the readers, the masks, the runner and the methods."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class MissingType(IntEnum):
    """The modality a sample lacks, if any. No sample lacks both."""

    COMPLETE = 0
    TEXT_MISSING = 1
    IMAGE_MISSING = 2

    @property
    def label(self) -> str:
        return MISSING_TYPE_NAMES[self]


MISSING_TYPE_NAMES = ("complete", "text_missing", "image_missing")

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image+text example as a dataset reader returns it."""

    sample_id: str
    image_path: Path
    text: str
    labels: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class TaskSample:
    """A sample placed in a task, with its class indices and its missing type.

    `targets` are positions in the protocol's class order. For multi-label data
    they cover every label of the sample that the protocol uses, including
    labels of later tasks. The runner drops the ones not yet seen.
    """

    sample: Sample
    task: int
    targets: tuple[int, ...]
    missing: MissingType
