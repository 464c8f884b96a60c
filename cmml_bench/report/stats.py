"""Seed-level summaries and paired tests of significance with Holm correction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# With n non-zero paired differences, the smallest two-sided exact Wilcoxon
# p-value is 2 / 2**n, so n = 5 gives at best 0.0625 and n = 6 gives 0.03125.
WILCOXON_MIN_PAIRS = 6
TTEST_MIN_PAIRS = 2


@dataclass
class Summary:
    """Mean and sample standard deviation (ddof=1) over seeds."""

    mean: float | None
    std: float | None
    count: int


@dataclass
class PairedTest:
    """One paired test of a method against the baseline over shared seeds."""

    test: str
    pairs: int
    statistic: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    note: str | None = None


def summarize_values(values: Sequence[float | None]) -> Summary:
    """Return mean and sample std (ddof=1) of the non-None values. The std is None for one value."""
    present = np.array([value for value in values if value is not None], dtype=float)
    if present.size == 0:
        return Summary(mean=None, std=None, count=0)
    std = float(np.std(present, ddof=1)) if present.size > 1 else None
    return Summary(mean=float(np.mean(present)), std=std, count=int(present.size))


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Return Holm-adjusted p-values in the input order, leaving None entries as None.

    With the m present p-values sorted ascending, the k-th (1-based) becomes
    max over i <= k of min(1, (m - i + 1) * p_(i)), which keeps the adjusted
    values in the same order as the raw ones.
    """
    indexed = [(value, index) for index, value in enumerate(p_values) if value is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    count = len(indexed)

    running_max = 0.0
    for rank, (value, index) in enumerate(sorted(indexed)):
        scaled = min(1.0, (count - rank) * float(value))
        running_max = max(running_max, scaled)
        adjusted[index] = running_max
    return adjusted


def wilcoxon_test(method_values: Sequence[float], baseline_values: Sequence[float]) -> PairedTest:
    """Run the two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, default options).

    Returns a result with a note instead of a p-value when fewer than
    WILCOXON_MIN_PAIRS paired differences are non-zero, since no outcome could
    then reach p < 0.05.
    """
    differences = np.asarray(method_values, dtype=float) - np.asarray(baseline_values, dtype=float)
    pairs = int(differences.size)
    nonzero = int(np.count_nonzero(differences))
    if nonzero < WILCOXON_MIN_PAIRS:
        counted = f"{pairs} paired seed{'s' if pairs != 1 else ''}"
        if nonzero != pairs:
            counted += f", {nonzero} with a non-zero difference"
        note = f"n/a ({counted}; Wilcoxon needs {WILCOXON_MIN_PAIRS} for p < 0.05)"
        return PairedTest(test="Wilcoxon signed-rank", pairs=pairs, note=note)

    result = stats.wilcoxon(method_values, baseline_values)
    return PairedTest(
        test="Wilcoxon signed-rank",
        pairs=pairs,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
    )


def paired_t_test(method_values: Sequence[float], baseline_values: Sequence[float]) -> PairedTest:
    """Run the two-sided paired t-test (scipy.stats.ttest_rel).

    Returns a note instead of a p-value for fewer than two pairs, or when every
    paired difference is the same within 1e-9 (the t statistic is then
    undefined, and rounding noise alone would give a huge t).
    """
    differences = np.asarray(method_values, dtype=float) - np.asarray(baseline_values, dtype=float)
    pairs = int(differences.size)
    if pairs < TTEST_MIN_PAIRS:
        note = f"n/a ({pairs} paired seed{'s' if pairs != 1 else ''}; the paired t-test needs {TTEST_MIN_PAIRS})"
        return PairedTest(test="paired t-test", pairs=pairs, note=note)
    if np.allclose(differences, differences[0], rtol=0.0, atol=1e-9):
        note = f"n/a (all {pairs} paired differences equal {differences[0]:.4g}; t is undefined)"
        return PairedTest(test="paired t-test", pairs=pairs, note=note)

    result = stats.ttest_rel(method_values, baseline_values)
    return PairedTest(
        test="paired t-test",
        pairs=pairs,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
    )


def apply_holm(tests: Sequence[PairedTest]) -> None:
    """Set `p_holm` on each test from the p-values of all tests in the family."""
    adjusted = holm_adjust([test.p_value for test in tests])
    for test, value in zip(tests, adjusted):
        test.p_holm = value
