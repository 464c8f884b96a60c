"""Missing-modality masks: which samples of a task split lose their text or image.

A mask is a pure function of (seed, dataset, task, split, mix) and of the set
of sample ids. The random generator is seeded from a hash of all of these
inputs, and samples are ordered by sample_id before the draw, so neither the
reading order nor an earlier run changes the result. Nothing is cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cmml_bench.data.types import MissingType

MISSING_KINDS = ("text", "image", "both")


@dataclass(frozen=True)
class MissingMix:
    """The missing-modality setting of one task split.

    `type` is `text`, `image` or `both`, and `rate` is the fraction of samples
    that lose a modality. For `both`, `both_ratio` is the fraction of those
    that lose the image, and the others lose the text.
    """

    type: str = "both"
    rate: float = 0.0
    both_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.type not in MISSING_KINDS:
            raise ValueError(f"missing type must be one of {', '.join(MISSING_KINDS)}, got {self.type!r}")
        for name in ("rate", "both_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    def to_dict(self) -> dict:
        return {"type": self.type, "rate": float(self.rate), "both_ratio": float(self.both_ratio)}


def missing_counts(n: int, mix: MissingMix) -> tuple[int, int]:
    """Return (text_missing, image_missing) for n samples: exact floors, no rounding drift."""
    masked = math.floor(Fraction(repr(float(mix.rate))) * n)
    if mix.type == "text":
        return masked, 0
    if mix.type == "image":
        return 0, masked

    image_missing = math.floor(Fraction(repr(float(mix.both_ratio))) * masked)
    return masked - image_missing, image_missing


def mask_seed(seed: int, dataset: str, task: int, split: str, mix: MissingMix) -> int:
    """Derive the generator seed from every input of the mask."""
    key = json.dumps(
        {"seed": int(seed), "dataset": dataset, "task": int(task), "split": split, "mix": mix.to_dict()},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def draw_mask(
    sample_ids: Iterable[str],
    *,
    seed: int,
    dataset: str,
    task: int,
    split: str,
    mix: MissingMix,
) -> dict[str, MissingType]:
    """Assign a MissingType to every sample id of one task split.

    floor(rate * N) samples lose a modality. For type `both`,
    floor(both_ratio * masked) of them lose the image and the rest lose the
    text. No sample loses both.
    """
    ordered = sorted(set(sample_ids))
    text_missing, image_missing = missing_counts(len(ordered), mix)

    rng = np.random.default_rng(mask_seed(seed, dataset, task, split, mix))
    permutation = rng.permutation(len(ordered))

    masks = {sample_id: MissingType.COMPLETE for sample_id in ordered}
    for position, index in enumerate(permutation[: image_missing + text_missing]):
        kind = MissingType.IMAGE_MISSING if position < image_missing else MissingType.TEXT_MISSING
        masks[ordered[index]] = kind
    return masks


def mask_hash(masks: Mapping[str, MissingType]) -> str:
    """Return a SHA-256 hex digest of a mask (sample ids and their missing types)."""
    payload = json.dumps(sorted((sample_id, int(kind)) for sample_id, kind in masks.items()))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
