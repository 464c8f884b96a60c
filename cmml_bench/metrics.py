"""Continual-learning metrics on the score matrix R, and per-sample scores.

R[i][j] is the score (a percentage) on task j's test split after training task
i. A matrix may come as a square list of rows with `None` above the diagonal
(as `result.json` stores it) or as a lower-triangular list whose row i has
i + 1 entries. A run that stopped early has rows that are all `None` after the
last trained task. Every metric is then computed on the leading (k+1) x (k+1)
block of the k+1 trained tasks.

Scores here are plain Python floats, and inputs are plain sequences or numpy
arrays, so callers convert torch tensors with `.tolist()` or `.numpy()` first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRIC_NAMES = ("ap", "forgetting", "forgetting_max", "bwt", "aia", "last")

# Metrics where a higher value is better. For the others (forgetting) lower is better.
HIGHER_IS_BETTER = {
    "ap": True,
    "forgetting": False,
    "forgetting_max": False,
    "bwt": True,
    "aia": True,
    "last": True,
}


class MatrixError(ValueError):
    """A score matrix that is not a lower-triangular list of trained rows."""


def trained_block(matrix: Sequence[Sequence[float | None]]) -> list[list[float]]:
    """Return the lower triangle of the trained rows of R as float rows.

    Row i of the result contains R[i][0..i]. Entries above the diagonal are ignored.
    Raises MatrixError when the rows are neither lower-triangular nor square,
    or a trained row misses a lower-triangle entry. It also raises on a trained
    row after an untrained one, a non-finite score, or no trained row at all.
    """
    rows = [list(row) if row is not None else [] for row in matrix]
    num_rows = len(rows)
    if num_rows == 0:
        raise MatrixError("the score matrix has no rows")

    _check_shape(rows)

    block: list[list[float]] = []
    for i, row in enumerate(rows):
        lower = row[: i + 1]
        missing = [j for j, value in enumerate(lower) if value is None]

        if len(missing) == len(lower):
            # An untrained row: every later row must be untrained too.
            _check_untrained_tail(rows, i)
            break

        if missing:
            raise MatrixError(
                f"row {i} of the score matrix is trained but R[{i}][{missing[0]}] is missing; "
                f"every R[i][j] with j <= i must be present once task i is trained"
            )

        block.append([_finite_score(value, i, j) for j, value in enumerate(lower)])

    if not block:
        raise MatrixError("the score matrix has no trained task (row 0 is empty)")
    return block


def _check_shape(rows: list[list[Any]]) -> None:
    num_rows = len(rows)
    lower_triangular = all(len(row) == i + 1 for i, row in enumerate(rows))
    square = all(len(row) == num_rows for row in rows)
    if lower_triangular or square:
        return

    lengths = [len(row) for row in rows]
    raise MatrixError(
        f"the score matrix has {num_rows} rows of lengths {lengths}; expected a square "
        f"{num_rows} x {num_rows} matrix or a lower triangle whose row i has i + 1 entries"
    )


def _check_untrained_tail(rows: list[list[Any]], first_untrained: int) -> None:
    for i in range(first_untrained + 1, len(rows)):
        if any(value is not None for value in rows[i][: i + 1]):
            raise MatrixError(
                f"row {i} of the score matrix has scores but row {first_untrained} "
                f"has none; trained rows must come first"
            )


def _finite_score(value: Any, i: int, j: int) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise MatrixError(f"R[{i}][{j}] = {value!r} is not a number") from None
    if not math.isfinite(score):
        raise MatrixError(f"R[{i}][{j}] = {score} is not finite")
    return score


def average_performance(matrix: Sequence[Sequence[float | None]]) -> float:
    """Compute AP: the mean over tasks j of R[T-1][j], the final row."""
    block = trained_block(matrix)
    return float(np.mean(block[-1]))


def forgetting(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Compute the diagonal forgetting: mean over j < T-1 of R[j][j] - R[T-1][j].

    Returns None for a single trained task.
    """
    block = trained_block(matrix)
    last = len(block) - 1
    if last == 0:
        return None
    drops = [block[j][j] - block[last][j] for j in range(last)]
    return float(np.mean(drops))


def forgetting_max(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Compute the max forgetting of Chaudhry et al. (2018).

    Mean over j < T-1 of (max over l in [j, T-2] of R[l][j]) - R[T-1][j]: the
    drop from the best score a task ever had before the final task. Returns None
    for a single trained task.
    """
    block = trained_block(matrix)
    last = len(block) - 1
    if last == 0:
        return None
    drops = []
    for j in range(last):
        best_before_last = max(block[l][j] for l in range(j, last))
        drops.append(best_before_last - block[last][j])
    return float(np.mean(drops))


def backward_transfer(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Compute BWT: mean over j < T-1 of R[T-1][j] - R[j][j].

    Negative values mean forgetting. Returns None for a single trained task.
    """
    block = trained_block(matrix)
    last = len(block) - 1
    if last == 0:
        return None
    changes = [block[last][j] - block[j][j] for j in range(last)]
    return float(np.mean(changes))


def average_incremental_accuracy(matrix: Sequence[Sequence[float | None]]) -> float:
    """Compute AIA: the mean over i of the mean of R[i][0..i]."""
    block = trained_block(matrix)
    return float(np.mean([np.mean(row) for row in block]))


def last(matrix: Sequence[Sequence[float | None]]) -> float:
    """Return R[T-1][T-1], the score on the last trained task after training it."""
    block = trained_block(matrix)
    return float(block[-1][-1])


def ap_after_each_task(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    """Return, for each trained task i, the mean of R[i][0..i] (the AP curve)."""
    block = trained_block(matrix)
    return [float(np.mean(row)) for row in block]


def summarize(matrix: Sequence[Sequence[float | None]]) -> dict[str, float | None]:
    """Compute every metric of `result.json` from one score matrix.

    Keys: ap, forgetting, forgetting_max, bwt, aia, last. Forgetting and BWT are
    None when only one task is trained.
    """
    return {
        "ap": average_performance(matrix),
        "forgetting": forgetting(matrix),
        "forgetting_max": forgetting_max(matrix),
        "bwt": backward_transfer(matrix),
        "aia": average_incremental_accuracy(matrix),
        "last": last(matrix),
    }


def accuracy(labels: Sequence[Any] | np.ndarray, predictions: Sequence[Any] | np.ndarray) -> float:
    """Compute single-label accuracy in percent.

    Labels and predictions are equal-length sequences of class names or indices.
    Raises ValueError on empty input or on a length mismatch.
    """
    labels_array = np.asarray(labels)
    predictions_array = np.asarray(predictions)
    if labels_array.shape != predictions_array.shape or labels_array.ndim != 1:
        raise ValueError(
            f"accuracy needs two 1-D sequences of the same length, got shapes "
            f"{labels_array.shape} and {predictions_array.shape}"
        )
    if labels_array.size == 0:
        raise ValueError("accuracy is undefined on zero samples")
    return float(np.mean(labels_array == predictions_array) * 100.0)


def f1_from_counts(
    true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray
) -> np.ndarray:
    """Compute F1 = 2 TP / (2 TP + FP + FN) elementwise, NaN where TP + FP + FN is 0.

    A NaN marks a label with no positive sample and no positive prediction.
    Callers average with `np.nanmean`, so such labels are left out of the mean.
    """
    true_positives = np.asarray(true_positives, dtype=float)
    denominator = 2.0 * true_positives + np.asarray(false_positives, dtype=float) + np.asarray(
        false_negatives, dtype=float
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2.0 * true_positives / denominator, np.nan)


def macro_f1(
    label_sets: Sequence[Iterable[Any]],
    predicted_sets: Sequence[Iterable[Any]],
    label_universe: Iterable[Any],
) -> float:
    """Compute multi-label macro F1 in percent: the mean over labels of each label's F1.

    `label_sets[n]` and `predicted_sets[n]` are the true and the predicted labels
    of sample n (any iterable of hashable labels, possibly empty).
    `label_universe` lists the labels that count, for example the labels seen
    so far. Labels outside it are ignored.

    A label of the universe with no positive sample and no positive prediction
    has F1 = 0/0. It is skipped (left out of the mean) rather than counted as 0
    or 1. Counting it as 0 would punish a model for a label the test data does
    not contain, and counting it as 1 would reward it. Skipping also makes the
    score independent of labels that appear nowhere in the data. A label with
    predictions but no positives, or positives but no predictions, has F1 = 0.

    Raises ValueError on a length mismatch, on empty input, and when no label of
    the universe occurs in the labels or the predictions.
    """
    universe = list(dict.fromkeys(label_universe))
    if len(label_sets) != len(predicted_sets):
        raise ValueError(
            f"macro_f1 needs as many prediction sets as label sets, got "
            f"{len(predicted_sets)} and {len(label_sets)}"
        )
    if len(label_sets) == 0:
        raise ValueError("macro F1 is undefined on zero samples")

    targets = multi_hot(label_sets, universe)
    predictions = multi_hot(predicted_sets, universe)
    return macro_f1_from_indicators(targets, predictions)


def multi_hot(label_sets: Sequence[Iterable[Any]], universe: Sequence[Any]) -> np.ndarray:
    """Encode label sets as a (samples x labels) boolean matrix over `universe`."""
    column = {label: index for index, label in enumerate(universe)}
    matrix = np.zeros((len(label_sets), len(universe)), dtype=bool)
    for row, labels in enumerate(label_sets):
        for label in labels:
            index = column.get(label)
            if index is not None:
                matrix[row, index] = True
    return matrix


def macro_f1_from_indicators(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Compute macro F1 in percent from (samples x labels) 0/1 matrices.

    The columns are the label universe. Same rule as `macro_f1`: a label with
    no positive sample and no positive prediction is skipped. Use this form for
    thresholded model outputs, for example `(torch.sigmoid(logits) > 0.5).numpy()`.
    """
    targets = np.asarray(targets).astype(bool)
    predictions = np.asarray(predictions).astype(bool)
    if targets.shape != predictions.shape or targets.ndim != 2:
        raise ValueError(
            f"macro F1 needs two (samples x labels) matrices of the same shape, got "
            f"{targets.shape} and {predictions.shape}"
        )
    if targets.shape[0] == 0:
        raise ValueError("macro F1 is undefined on zero samples")

    true_positives = np.sum(targets & predictions, axis=0)
    false_positives = np.sum(~targets & predictions, axis=0)
    false_negatives = np.sum(targets & ~predictions, axis=0)
    per_label = f1_from_counts(true_positives, false_positives, false_negatives)
    if np.all(np.isnan(per_label)):
        raise ValueError(
            "macro F1 is undefined: no label of the universe occurs in the labels or the predictions"
        )
    return float(np.nanmean(per_label) * 100.0)
