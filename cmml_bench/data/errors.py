"""Errors and skip counts shared by the dataset readers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cmml_bench.data.types import Sample


class DataError(ValueError):
    """Invalid or missing raw data: the message names the file and the fix."""


@dataclass
class ReadResult:
    """The samples a reader returns, with the count of skipped items per reason."""

    samples: list[Sample]
    skipped: Counter = field(default_factory=Counter)


class SkipCounter:
    """Raise a DataError for an invalid item, or count it when skipping is enabled.

    Reasons that come from the layout of a package (an SVG-only tux paint stamp,
    a symlinked duplicate clip-art image) are always counted with `count()`;
    only invalid samples go through `invalid()`.
    """

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.counts: Counter = Counter()

    def count(self, reason: str) -> None:
        self.counts[reason] += 1

    def invalid(self, reason: str, message: str) -> None:
        if not self.skip_invalid:
            raise DataError(f"{message} (pass --skip-invalid to skip and count such samples)")
        self.counts[reason] += 1
