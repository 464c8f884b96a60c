"""Golden tests for the continual-learning metrics and the per-sample scores.

Every expected number is computed by hand in the comment next to it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmml_bench import metrics
from cmml_bench.metrics import MatrixError

WORKED = [[90], [80, 85], [70, 75, 88]]


def test_worked_example_ap():
    # (70 + 75 + 88) / 3 = 77.666...
    assert round(metrics.average_performance(WORKED), 2) == 77.67


def test_worked_example_forgetting_and_bwt():
    # ((90 - 70) + (85 - 75)) / 2 = 15
    assert metrics.forgetting(WORKED) == pytest.approx(15.0)
    assert metrics.backward_transfer(WORKED) == pytest.approx(-15.0)
    # Scores only fall, so the max variant equals the diagonal one.
    assert metrics.forgetting_max(WORKED) == pytest.approx(15.0)


def test_worked_example_aia_and_last():
    expected_aia = (90 + (80 + 85) / 2 + (70 + 75 + 88) / 3) / 3
    assert metrics.average_incremental_accuracy(WORKED) == pytest.approx(expected_aia)
    assert metrics.last(WORKED) == 88.0


def test_square_form_with_nulls_matches_triangle():
    square = [[90, None, None], [80, 85, None], [70, 75, 88]]
    assert metrics.summarize(square) == metrics.summarize(WORKED)


def test_max_forgetting_differs_from_diagonal():
    # Task 0 rises from 50 to 70 after task 1, then falls to 60.
    matrix = [[50], [70, 80], [60, 75, 90]]
    # Diagonal: ((50 - 60) + (80 - 75)) / 2 = -2.5
    assert metrics.forgetting(matrix) == pytest.approx(-2.5)
    # Max: ((max(50, 70) - 60) + (80 - 75)) / 2 = (10 + 5) / 2 = 7.5
    assert metrics.forgetting_max(matrix) == pytest.approx(7.5)
    # BWT: ((60 - 50) + (75 - 80)) / 2 = 2.5
    assert metrics.backward_transfer(matrix) == pytest.approx(2.5)


def test_single_task_has_no_forgetting():
    summary = metrics.summarize([[73.0]])
    assert summary["ap"] == 73.0
    assert summary["aia"] == 73.0
    assert summary["last"] == 73.0
    assert summary["forgetting"] is None
    assert summary["forgetting_max"] is None
    assert summary["bwt"] is None


def test_four_tasks_diagonal_off_by_one():
    matrix = [[80], [60, 90], [50, 70, 85], [40, 65, 55, 95]]
    # AP = (40 + 65 + 55 + 95) / 4 = 63.75
    assert metrics.average_performance(matrix) == pytest.approx(63.75)
    # Forgetting = ((80-40) + (90-65) + (85-55)) / 3 = 95 / 3. Averaging over
    # T = 4 tasks gives 23.75, and skipping task T-2 gives 32.5.
    assert metrics.forgetting(matrix) == pytest.approx(95 / 3)
    assert metrics.backward_transfer(matrix) == pytest.approx(-95 / 3)


def test_four_tasks_max_off_by_one():
    matrix = [[60], [70, 90], [65, 80, 85], [75, 60, 70, 95]]
    # j=0: max(60, 70, 65) - 75 = -5. Including the final row l = T-1 in the
    # max would give 0 instead. j=1: 90 - 60 = 30. j=2: 85 - 70 = 15.
    assert metrics.forgetting_max(matrix) == pytest.approx(40 / 3)
    # Diagonal: ((60-75) + (90-60) + (85-70)) / 3 = 30 / 3 = 10
    assert metrics.forgetting(matrix) == pytest.approx(10.0)
    # AIA: (60 + 80 + 230/3 + 75) / 4
    assert metrics.average_incremental_accuracy(matrix) == pytest.approx((60 + 80 + 230 / 3 + 75) / 4)
    assert metrics.average_performance(matrix) == pytest.approx(75.0)
    assert metrics.last(matrix) == 95.0


def test_ap_curve_per_task():
    assert metrics.ap_after_each_task(WORKED) == pytest.approx([90.0, 82.5, 233 / 3])


def test_partial_matrix_uses_trained_block():
    partial = [[90, None, None], [80, 85, None], [None, None, None]]
    summary = metrics.summarize(partial)
    # Two trained tasks: AP = (80 + 85) / 2, forgetting = 90 - 80.
    assert summary["ap"] == pytest.approx(82.5)
    assert summary["forgetting"] == pytest.approx(10.0)
    assert summary["last"] == 85.0


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[90], [80]], "rows of lengths"),
        ([[90, None], [None, 85]], r"R\[1\]\[0\] is missing"),
        ([[90, None, None], [None, None, None], [70, 75, 88]], "trained rows must come first"),
        ([[None, None], [None, None]], "no trained task"),
        ([], "no rows"),
        ([[90], [80, float("nan")]], "not finite"),
        ([[90], [80, "x"]], "not a number"),
    ],
)
def test_malformed_matrix_raises(matrix, message):
    with pytest.raises(MatrixError, match=message):
        metrics.summarize(matrix)


def test_accuracy_percent():
    # 3 of 4 correct.
    assert metrics.accuracy(["a", "b", "c", "a"], ["a", "c", "c", "a"]) == pytest.approx(75.0)
    assert metrics.accuracy(np.array([1, 2]), np.array([1, 2])) == 100.0


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="zero samples"):
        metrics.accuracy([], [])
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy([1, 2], [1])


MULTI_LABELS = [{"a", "b"}, {"b"}, {"a"}, {"c"}]
MULTI_PREDICTIONS = [{"a"}, {"b", "c", "z"}, set(), set()]


def test_macro_f1_hand_example():
    # a: TP 1, FP 0, FN 1 -> 2/3.  b: TP 1, FP 0, FN 1 -> 2/3.
    # c: TP 0, FP 1, FN 1 -> 0.   d: absent from labels and predictions -> skipped.
    # z is outside the universe and ignored. Mean of (2/3, 2/3, 0) = 4/9.
    score = metrics.macro_f1(MULTI_LABELS, MULTI_PREDICTIONS, ["a", "b", "c", "d"])
    assert score == pytest.approx(400 / 9)


def test_macro_f1_prediction_only_label_scores_zero():
    # e is predicted once and never true: F1 = 0, so the mean is (2/3 + 2/3 + 0 + 0) / 4.
    predictions = [{"a"}, {"b", "c", "e"}, set(), set()]
    score = metrics.macro_f1(MULTI_LABELS, predictions, ["a", "b", "c", "d", "e"])
    assert score == pytest.approx(100 / 3)


def test_macro_f1_indicator_form_matches_sets():
    universe = ["a", "b", "c", "d"]
    targets = metrics.multi_hot(MULTI_LABELS, universe)
    predictions = metrics.multi_hot(MULTI_PREDICTIONS, universe)
    assert targets.sum() == 5
    assert metrics.macro_f1_from_indicators(targets, predictions) == pytest.approx(400 / 9)


def test_macro_f1_undefined_cases_raise():
    with pytest.raises(ValueError, match="no label of the universe"):
        metrics.macro_f1([set()], [set()], ["a"])
    with pytest.raises(ValueError, match="zero samples"):
        metrics.macro_f1([], [], ["a"])
    with pytest.raises(ValueError, match="as many prediction sets"):
        metrics.macro_f1([{"a"}], [], ["a"])
