"""Missing-modality masks: exact counts and determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cmml_bench.data.images import missing_image
from cmml_bench.data.masks import MissingMix, draw_mask, mask_hash, missing_counts
from cmml_bench.data.types import MissingType

BOTH = MissingMix(type="both", rate=0.7, both_ratio=0.5)


def ids(n: int) -> list[str]:
    return [f"sample{i:05d}" for i in range(n)]


def draw(sample_ids, mix=BOTH, seed=0, dataset="tuxpaint", task=0, split="train"):
    return draw_mask(sample_ids, seed=seed, dataset=dataset, task=task, split=split, mix=mix)


def kinds(mask) -> Counter:
    return Counter(mask.values())


def test_both_rate_07_on_1000_samples():
    counts = kinds(draw(ids(1000)))
    assert counts[MissingType.TEXT_MISSING] == 350
    assert counts[MissingType.IMAGE_MISSING] == 350
    assert counts[MissingType.COMPLETE] == 300


def test_rate_zero_masks_nothing():
    counts = kinds(draw(ids(50), MissingMix("both", 0.0, 0.5)))
    assert counts == Counter({MissingType.COMPLETE: 50})


def test_rate_one_masks_everything():
    both = kinds(draw(ids(50), MissingMix("both", 1.0, 0.5)))
    assert both == Counter({MissingType.IMAGE_MISSING: 25, MissingType.TEXT_MISSING: 25})
    text = kinds(draw(ids(50), MissingMix("text", 1.0, 0.5)))
    assert text == Counter({MissingType.TEXT_MISSING: 50})
    image = kinds(draw(ids(50), MissingMix("image", 1.0, 0.5)))
    assert image == Counter({MissingType.IMAGE_MISSING: 50})


def test_odd_count_floors_both_steps():
    counts = kinds(draw(ids(7), MissingMix("both", 0.5, 0.5)))
    assert counts[MissingType.IMAGE_MISSING] == 1
    assert counts[MissingType.TEXT_MISSING] == 2
    assert counts[MissingType.COMPLETE] == 4


@pytest.mark.parametrize(
    ("n", "mix", "expected"),
    [
        (10, MissingMix("text", 0.7, 0.5), (7, 0)),
        (10, MissingMix("image", 0.7, 0.9), (0, 7)),
        (100, MissingMix("both", 0.29, 0.5), (15, 14)),  # 0.29 * 100 is 28.999... in binary floating point
        (49, MissingMix("both", 0.3, 0.2), (12, 2)),
        (0, BOTH, (0, 0)),
    ],
)
def test_missing_counts_table(n, mix, expected):
    assert missing_counts(n, mix) == expected


def test_same_inputs_give_same_mask():
    assert draw(ids(200)) == draw(ids(200))


def test_other_seed_gives_other_mask():
    assert draw(ids(200), seed=0) != draw(ids(200), seed=1)


@pytest.mark.parametrize(
    "change",
    [
        {"mix": MissingMix("both", 0.7, 0.4)},
        {"mix": MissingMix("both", 0.6, 0.5)},
        {"dataset": "clipart"},
        {"task": 1},
        {"split": "test"},
    ],
)
def test_each_input_changes_mask(change):
    assert draw(ids(200), **change) != draw(ids(200))


def test_reading_order_does_not_change_mask():
    shuffled = ids(200)
    random.Random(3).shuffle(shuffled)
    assert draw(shuffled) == draw(ids(200))


def test_no_sample_loses_both():
    mask = draw(ids(300))
    assert set(mask.values()) <= set(MissingType)
    assert len(mask) == 300


def test_mask_hash_tracks_content():
    first = draw(ids(100))
    assert mask_hash(first) == mask_hash(dict(reversed(list(first.items()))))
    assert mask_hash(first) != mask_hash(draw(ids(100), seed=5))


def test_mix_rejects_out_of_range():
    with pytest.raises(ValueError, match="rate"):
        MissingMix("both", 1.5, 0.5)
    with pytest.raises(ValueError, match="missing type"):
        MissingMix("audio", 0.5, 0.5)


def test_missing_image_is_white_rgb():
    image = missing_image(4)
    assert image.mode == "RGB"
    assert image.size == (4, 4)
    assert image.getextrema() == ((255, 255), (255, 255), (255, 255))
