"""Class selection, class order, train/test split, task assignment and subsets.

None of these depends on the run seed except `draw_subset`: runs with
different seeds share the class order and the test sets.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import replace
from fractions import Fraction

import numpy as np

from cmml_bench.data.types import Sample
from cmml_bench.protocols import Protocol, ProtocolError


def derived_rng(*parts: object) -> np.random.Generator:
    """Return a generator seeded from a SHA-256 of the JSON of `parts`."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def label_filter_of(protocol: Protocol):
    """Return a predicate for the labels a protocol may use, known before reading (None: all)."""
    rule = protocol.class_order_rule
    allowed = set(rule) if isinstance(rule, list) else None
    if protocol.class_filter.include is not None:
        included = set(protocol.class_filter.include)
        allowed = included if allowed is None else allowed & included
    excluded = set(protocol.class_filter.exclude)
    if allowed is None and not excluded:
        return None
    return lambda label: (allowed is None or label in allowed) and label not in excluded


def select_classes(protocol: Protocol, samples: list[Sample]) -> list[str]:
    """Apply the class filters to the labels found in the data; return the kept labels, sorted.

    Raises ProtocolError when a class named in the file is absent or too rare,
    or when the number of kept classes is not num_tasks x classes_per_task.
    """
    counts = Counter(label for sample in samples for label in sample.labels)
    rules = protocol.class_filter
    named = list(protocol.class_order_rule) if isinstance(protocol.class_order_rule, list) else []
    named += list(rules.include or [])
    for label in dict.fromkeys(named):
        if counts[label] < rules.min_samples:
            raise ProtocolError(
                f"{protocol.path}: class {label!r} has {counts[label]} valid samples in the data, "
                f"fewer than classes.min_samples = {rules.min_samples}; check the name or remove the class "
                f"(known classes: {', '.join(sorted(counts)[:40])}{' ...' if len(counts) > 40 else ''})"
            )

    kept = sorted(
        label
        for label, count in counts.items()
        if count >= rules.min_samples
        and label not in rules.exclude
        and (rules.include is None or label in rules.include)
        and (not isinstance(protocol.class_order_rule, list) or label in protocol.class_order_rule)
    )
    if len(kept) != protocol.num_classes:
        raise ProtocolError(
            f"{protocol.path}: the class filters keep {len(kept)} classes, but num_tasks x classes_per_task = "
            f"{protocol.num_tasks} x {protocol.classes_per_task} = {protocol.num_classes}; "
            "change classes.include/exclude/min_samples, num_tasks or classes_per_task "
            f"(kept: {', '.join(kept[:40])}{' ...' if len(kept) > 40 else ''})"
        )
    return kept


def order_classes(protocol: Protocol, classes: list[str]) -> list[str]:
    """Return the classes in the protocol's order: sorted, a seeded permutation, or the explicit list."""
    rule = protocol.class_order_rule
    if isinstance(rule, list):
        return list(rule)
    ordered = sorted(classes)
    if rule == "sorted":
        return ordered
    permutation = np.random.default_rng(rule["permutation"]["seed"]).permutation(len(ordered))
    return [ordered[index] for index in permutation]


def stratified_split(protocol: Protocol, samples: list[Sample], classes: list[str]) -> list[Sample]:
    """Split single-label samples per class into train and test with the protocol's test_fraction and split_seed.

    Each class gets round(test_fraction * n) test samples (halves round up),
    at least one and at most n - 1.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.labels[0] in classes:
            by_class[sample.labels[0]].append(sample)

    fraction = Fraction(repr(protocol.test_fraction))
    result = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda sample: sample.sample_id)
        if len(members) < 2:
            raise ProtocolError(
                f"{protocol.path}: class {label!r} has {len(members)} sample, too few for a train/test split; "
                "raise classes.min_samples to 2 or more"
            )
        n_test = min(max(math.floor(fraction * len(members) + Fraction(1, 2)), 1), len(members) - 1)
        order = derived_rng("split", protocol.split_seed, label).permutation(len(members))
        test_positions = set(order[:n_test].tolist())
        result += [
            replace(sample, split="test" if position in test_positions else "train")
            for position, sample in enumerate(members)
        ]
    return result


def assign_task(labels: Iterable[str], class_index: dict[str, int], classes_per_task: int) -> tuple[int, tuple[int, ...]] | None:
    """Return (task, targets) by the `earliest_task` rule, or None when no label is used.

    targets are the class-order positions of every used label, and the task is
    the earliest task that contains one of them.
    """
    targets = tuple(sorted({class_index[label] for label in labels if label in class_index}))
    if not targets:
        return None
    return targets[0] // classes_per_task, targets


def draw_subset(
    keyed: dict[tuple[str, str], list[str]], limit: int, seed: int, dataset: str
) -> set[str]:
    """Keep at most `limit` sample ids per (split, class) group, drawn with the run seed."""
    kept: set[str] = set()
    for (split, label), sample_ids in sorted(keyed.items()):
        ordered = sorted(sample_ids)
        if len(ordered) <= limit:
            kept.update(ordered)
            continue
        choice = derived_rng("subset", seed, dataset, split, label, limit).choice(len(ordered), size=limit, replace=False)
        kept.update(ordered[index] for index in choice.tolist())
    return kept
