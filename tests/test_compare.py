"""Tests of `cmml-bench compare` on run folders written with known matrices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from cmml_bench.report import bootstrap
from cmml_bench.report.collect import collect_runs, group_runs
from cmml_bench.report.commands import compare_command
from cmml_bench.report.compare import build_group_report
from cmml_bench.report.stats import holm_adjust, paired_t_test, wilcoxon_test
from report_fixtures import single_label_rows, write_run

# Two tasks; R[0][0] = 90 in every run, so AP = mean of the final row and
# forgetting = 90 - R[1][0].
ALPHA_FINAL = {0: [60, 80], 1: [62, 82], 2: [70, 84]}  # AP 70, 72, 77
BETA_FINAL = {0: [50, 70], 1: [55, 71], 2: [52, 74]}  # AP 60, 63, 63
GAMMA_FINAL = {0: [40, 60]}  # AP 50, one seed


def two_task(final_row: list[float]) -> list[list[float]]:
    return [[90], list(final_row)]


def write_three_methods(root: Path) -> None:
    for seed, row in ALPHA_FINAL.items():
        write_run(root, "alpha", seed, {"task_agnostic": two_task(row)})
    for seed, row in BETA_FINAL.items():
        write_run(root, "beta", seed, {"task_agnostic": two_task(row)})
    for seed, row in GAMMA_FINAL.items():
        write_run(root, "gamma", seed, {"task_agnostic": two_task(row)})


def run_compare(root: Path, *extra: str, out: Path | None = None) -> tuple[Path, str]:
    report_dir = out or root / "report"
    result = CliRunner().invoke(
        compare_command, [str(root), "--out", str(report_dir), "--bootstrap-samples", "200", *extra]
    )
    assert result.exit_code == 0, result.output
    return report_dir, result.output


def read_table(report_dir: Path, stem: str) -> pd.DataFrame:
    return pd.read_csv(report_dir / "tables" / f"{stem}.csv")


@pytest.fixture(scope="module")
def three_methods(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("runs")
    write_three_methods(root)
    return run_compare(root)


def test_results_table_means_and_stds(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__results").set_index("method")

    # alpha AP: 70, 72, 77 -> mean 73, sample std sqrt((9 + 1 + 16) / 2) = sqrt(13).
    assert table.loc["alpha", "ap_mean"] == pytest.approx(73.0)
    assert table.loc["alpha", "ap_std"] == pytest.approx(math.sqrt(13))
    # alpha forgetting: 30, 28, 20 -> mean 26, std sqrt((16 + 4 + 36) / 2) = sqrt(28).
    assert table.loc["alpha", "forgetting_mean"] == pytest.approx(26.0)
    assert table.loc["alpha", "forgetting_std"] == pytest.approx(math.sqrt(28))
    # beta AP: 60, 63, 63 -> mean 62, std sqrt((4 + 1 + 1) / 2) = sqrt(3).
    assert table.loc["beta", "ap_mean"] == pytest.approx(62.0)
    assert table.loc["beta", "ap_std"] == pytest.approx(math.sqrt(3))
    # beta Last: 70, 71, 74 -> mean 215 / 3.
    assert table.loc["beta", "last_mean"] == pytest.approx(215 / 3)


def test_results_table_ranks_and_seed_flags(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__results")
    assert list(table["method"]) == ["alpha", "beta", "gamma"]
    assert list(table["rank"]) == [1, 2, 3]
    assert list(table["seeds"]) == [3, 3, 1]
    assert list(table["fewer_seeds"]) == [False, False, True]


def test_single_seed_shows_no_std(three_methods):
    report_dir, _ = three_methods
    markdown = (report_dir / "tables" / "toy-protocol__task_agnostic__results.md").read_text()
    gamma_line = next(line for line in markdown.splitlines() if "| gamma |" in line)
    assert "| 50.00 |" in gamma_line
    assert "±" not in gamma_line
    assert "1 (fewer)" in gamma_line
    alpha_line = next(line for line in markdown.splitlines() if "| alpha |" in line)
    assert f"73.00 ± {math.sqrt(13):.2f}" in alpha_line


def test_missing_type_scores_in_table(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__results").set_index("method")
    # gamma seed 0: task 0 has samples 0..39 correct, task 1 has 0..59 correct out of 100.
    # Complete samples are indices 0, 3, ..., 99 (34 per task): 14 + 20 correct of 68.
    assert table.loc["gamma", "complete_mean"] == pytest.approx(34 / 68 * 100)


def test_ttest_p_value_matches_scipy(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    expected = stats.ttest_rel([60, 63, 63], [70, 72, 77]).pvalue
    assert table.loc["beta", "ttest_p"] == pytest.approx(expected)
    assert table.loc["beta", "mean_difference"] == pytest.approx(-11.0)
    assert table.loc["beta", "paired_seeds"] == 3


def test_too_few_pairs_are_reported(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    assert table.loc["beta", "wilcoxon_note"] == "n/a (3 paired seeds; Wilcoxon needs 6 for p < 0.05)"
    assert math.isnan(table.loc["beta", "wilcoxon_p"])
    assert table.loc["gamma", "ttest_note"] == "n/a (1 paired seed; the paired t-test needs 2)"


def test_holm_column_over_compared_methods(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    # Only beta has a t-test p-value, so the family has one member and Holm keeps it.
    assert table.loc["beta", "ttest_p_holm"] == pytest.approx(table.loc["beta", "ttest_p"])
    assert math.isnan(table.loc["gamma", "ttest_p_holm"])


def test_bootstrap_single_seed_pair(three_methods):
    report_dir, _ = three_methods
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    # gamma vs alpha share seed 0 only: AP 50 vs 70 from the predictions.
    assert table.loc["gamma", "bootstrap_ap_difference"] == pytest.approx(-20.0)
    assert table.loc["gamma", "bootstrap_ci_low"] < -20.0 < table.loc["gamma", "bootstrap_ci_high"]
    assert table.loc["gamma", "bootstrap_seeds"] == "0"
    assert table.loc["gamma", "bootstrap_samples"] == 200


def test_report_md_explains_and_links(three_methods):
    report_dir, _ = three_methods
    report = (report_dir / "report.md").read_text()
    assert "sample standard deviation (ddof = 1)" in report
    assert "scipy.stats.wilcoxon" in report
    assert "Holm" in report
    assert "baseline: the best method by ap (alpha)" in report
    assert "gamma has 1 seed(s) while another method has 3" in report
    assert "](tables/toy-protocol__task_agnostic__results.csv)" in report
    assert "![ap_curve](plots/toy-protocol__task_agnostic__ap_curve.png)" in report


def test_terminal_output_has_tables(three_methods):
    _, output = three_methods
    assert "Results ranked by AP" in output
    assert "alpha" in output
    assert "report written to" in output


def test_plots_are_valid_images(three_methods):
    report_dir, _ = three_methods
    stems = [
        "toy-protocol__task_agnostic__matrix__alpha",
        "toy-protocol__task_agnostic__matrix__beta",
        "toy-protocol__task_agnostic__matrix__gamma",
        "toy-protocol__task_agnostic__ap_curve",
        "toy-protocol__task_agnostic__forgetting",
        "toy-protocol__task_agnostic__missing_types",
    ]
    for stem in stems:
        png = report_dir / "plots" / f"{stem}.png"
        svg = report_dir / "plots" / f"{stem}.svg"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            width, height = image.size
        assert width > 0, stem
        assert height > 0, stem
        assert svg.read_text().lstrip().startswith("<?xml"), stem


def test_latex_table_escapes(three_methods):
    report_dir, _ = three_methods
    latex = (report_dir / "tables" / "toy-protocol__task_agnostic__results.tex").read_text()
    assert r"\begin{tabular}" in latex
    assert r"73.00 $\pm$ 3.61" in latex
    assert "toy-protocol, task-agnostic" in latex


def test_wilcoxon_p_value_matches_scipy(tmp_path):
    method_ap = [71, 74, 69, 80, 77, 73]
    baseline_ap = [70, 70, 70, 70, 70, 70]
    for seed in range(6):
        write_run(tmp_path, "method", seed, {"task_agnostic": [[float(method_ap[seed])]]})
        write_run(tmp_path, "base", seed, {"task_agnostic": [[float(baseline_ap[seed])]]})

    report_dir, _ = run_compare(tmp_path, "--baseline", "base", "--bootstrap-samples", "0", "--no-plots")
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    assert table.loc["method", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(method_ap, baseline_ap).pvalue)
    assert table.loc["method", "ttest_p"] == pytest.approx(stats.ttest_rel(method_ap, baseline_ap).pvalue)
    assert table.loc["method", "bootstrap_note"] == "n/a (--bootstrap-samples is 0)"


def test_holm_known_values():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_skips_missing_and_caps_at_one():
    adjusted = holm_adjust([None, 0.2, 0.6])
    assert adjusted[0] is None
    assert adjusted[1:] == pytest.approx([0.4, 0.6])
    assert holm_adjust([0.6, 0.7, 0.9]) == pytest.approx([1.0, 1.0, 1.0])
    assert holm_adjust([]) == []


def test_paired_tests_degenerate_cases():
    assert paired_t_test([1, 2, 3], [0, 1, 2]).note.startswith("n/a (all 3 paired differences equal 1")
    note = wilcoxon_test([1, 2, 3, 4, 5, 6, 7], [1, 2, 0, 0, 0, 0, 0]).note
    assert note == "n/a (7 paired seeds, 5 with a non-zero difference; Wilcoxon needs 6 for p < 0.05)"


def shuffled_outcomes(rng: np.random.Generator, rates: list[float], tasks: int, samples: int):
    """Per task, one TaskOutcomes per rate with exactly rate * samples correct samples at random places."""
    outcomes = []
    for task in range(tasks):
        ids = np.array([f"t{task}-{index}" for index in range(samples)])
        per_run = []
        for rate in rates:
            correct = np.zeros(samples)
            correct[rng.permutation(samples)[: round(rate * samples)]] = 1.0
            per_run.append(bootstrap.TaskOutcomes(sample_ids=ids, correct=correct))
        outcomes.append(per_run)
    return outcomes


def test_bootstrap_covers_true_difference():
    # 80% and 65% of every task's samples are correct: the true AP difference is 15.
    outcomes = shuffled_outcomes(np.random.default_rng(123), [0.80, 0.65], tasks=3, samples=300)
    differences, observed = bootstrap.paired_bootstrap_ap(outcomes, [(0, 1)], samples=500, seed=7)
    result = bootstrap.summarize_bootstrap(differences, observed, seeds=[0])
    assert observed == pytest.approx(15.0)
    assert result.low < 15.0 < result.high
    assert result.low > 0.0
    assert result.high - result.low < 15.0
    # No replicate reaches 0, so p = 2 * (0 + 1) / (500 + 1).
    assert result.p_value == pytest.approx(2 / 501)


def test_bootstrap_reproducible_with_seed():
    outcomes = shuffled_outcomes(np.random.default_rng(5), [0.7, 0.6], tasks=2, samples=100)
    first, _ = bootstrap.paired_bootstrap_ap(outcomes, [(0, 1)], samples=300, seed=11)
    second, _ = bootstrap.paired_bootstrap_ap(outcomes, [(0, 1)], samples=300, seed=11)
    other, _ = bootstrap.paired_bootstrap_ap(outcomes, [(0, 1)], samples=300, seed=12)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_bootstrap_cli_reproducible(tmp_path):
    write_three_methods(tmp_path)
    first_dir, _ = run_compare(tmp_path, "--seed", "3", "--no-plots", out=tmp_path / "first")
    second_dir, _ = run_compare(tmp_path, "--seed", "3", "--no-plots", out=tmp_path / "second")
    first = read_table(first_dir, "toy-protocol__task_agnostic__significance")
    second = read_table(second_dir, "toy-protocol__task_agnostic__significance")
    pd.testing.assert_frame_equal(first, second)


def multi_label_rows(predictions: list[str]) -> list[dict]:
    labels = ["a|b", "b", "a", "c"]
    return [
        {
            "setting": "task_agnostic",
            "task": 0,
            "sample_id": f"s{index}",
            "missing_type": "complete",
            "label": label,
            "prediction": prediction,
        }
        for index, (label, prediction) in enumerate(zip(labels, predictions))
    ]


def test_bootstrap_multi_label_macro_f1(tmp_path):
    # Method: macro F1 4/9 as in test_metrics (a 2/3, b 2/3, c 0). Baseline predicts
    # every label set exactly: 100.
    method_rows = multi_label_rows(["a", "b|c", "", ""])
    baseline_rows = multi_label_rows(["a|b", "b", "a", "c"])
    write_run(tmp_path, "method", 0, {"task_agnostic": [[400 / 9]]},
              prediction_rows={"task_agnostic": method_rows}, multi_label=True)
    write_run(tmp_path, "base", 0, {"task_agnostic": [[100.0]]},
              prediction_rows={"task_agnostic": baseline_rows}, multi_label=True)

    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", "base", bootstrap_samples=100, bootstrap_seed=0)
    result = report.comparisons[0].bootstrap
    assert result.note is None
    assert result.observed == pytest.approx(400 / 9 - 100)
    assert result.low <= result.high <= 0.0
    assert report.warnings == []


def test_task_aware_never_ranked_with_agnostic(tmp_path):
    # "aware-only" scores 95 with the task id; "agnostic" scores 60 without it.
    write_run(tmp_path, "agnostic", 0, {"task_agnostic": [[90], [50, 70]]})
    write_run(tmp_path, "both", 0, {"task_agnostic": [[90], [40, 60]], "task_aware": [[95], [90, 92]]})
    write_run(tmp_path, "aware-only", 0, {"task_aware": [[99], [94, 96]]})

    report_dir, _ = run_compare(tmp_path)
    agnostic = read_table(report_dir, "toy-protocol__task_agnostic__results")
    aware = read_table(report_dir, "toy-protocol__task_aware__results")
    assert list(agnostic["method"]) == ["agnostic", "both"]
    assert list(aware["method"]) == ["aware-only", "both"]
    assert list(aware["rank"]) == [1, 2]

    report = (report_dir / "report.md").read_text()
    assert "## toy-protocol: task-aware (the true task id is given at test time)" in report
    assert (report_dir / "plots" / "toy-protocol__task_aware__ap_curve.png").is_file()


def test_task_id_claim_moves_run_to_task_aware(tmp_path):
    write_run(tmp_path, "honest", 0, {"task_agnostic": [[90], [50, 70]]})
    write_run(tmp_path, "peeks", 0, {"task_agnostic": [[99], [98, 99]]}, uses_task_id_at_test=True)

    report_dir, _ = run_compare(tmp_path, "--no-plots")
    agnostic = read_table(report_dir, "toy-protocol__task_agnostic__results")
    aware = read_table(report_dir, "toy-protocol__task_aware__results")
    assert list(agnostic["method"]) == ["honest"]
    assert list(aware["method"]) == ["peeks"]
    assert "reported as task-aware" in (report_dir / "report.md").read_text()


def test_incomplete_runs_left_out_and_listed(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path, "alpha", 1, {"task_agnostic": [[90]]}, status="incomplete", num_tasks=2)

    report_dir, output = run_compare(tmp_path, "--no-plots")
    table = read_table(report_dir, "toy-protocol__task_agnostic__results")
    assert list(table["seeds"]) == [1]
    assert list(table["seed_list"].astype(str)) == ["0"]

    report = (report_dir / "report.md").read_text()
    assert "## Incomplete runs (left out of every table)" in report
    assert "| `toy-protocol/alpha/seed1` | alpha | 1 | 1 of 2 |" in report
    assert "left out incomplete run" in output


def test_different_protocol_hashes_not_pooled(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path / "rerun", "alpha", 1, {"task_agnostic": [[90], [70, 90]]}, identity={"protocol_hash": "other"})

    report_dir, _ = run_compare(tmp_path, "--no-plots")
    results = sorted(path.name for path in (report_dir / "tables").glob("*__results.csv"))
    assert results == [
        "toy-protocol__task_agnostic__other__tiny-vilt__results.csv",
        "toy-protocol__task_agnostic__pppppppp__tiny-vilt__results.csv",
    ]
    first = read_table(report_dir, "toy-protocol__task_agnostic__pppppppp__tiny-vilt__results")
    assert list(first["ap_mean"]) == [70.0]

    report = (report_dir / "report.md").read_text()
    assert "runs differ in protocol_hash (other, pppppppppppppppp)" in report
    assert "not pooled" in report


def test_different_subset_not_pooled(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path / "small", "alpha", 1, {"task_agnostic": [[90], [70, 90]]}, identity={"subset": 50})
    groups, warnings = group_runs(collect_runs(tmp_path))
    assert len(groups) == 2
    assert any("subset (50, None)" in warning for warning in warnings)


def test_empty_folder_is_an_error(tmp_path):
    result = CliRunner().invoke(compare_command, [str(tmp_path)])
    assert result.exit_code == 1
    assert "no run folder found under" in result.output


def test_corrupt_result_is_skipped(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    broken = tmp_path / "toy-protocol" / "broken" / "seed0"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json", encoding="utf-8")
    missing_keys = tmp_path / "toy-protocol" / "partial" / "seed0"
    missing_keys.mkdir(parents=True)
    (missing_keys / "result.json").write_text(json.dumps({"protocol": "toy-protocol"}), encoding="utf-8")

    report_dir, output = run_compare(tmp_path, "--no-plots")
    assert "cannot be read as JSON" in output
    report = (report_dir / "report.md").read_text()
    assert "## Unreadable runs (skipped)" in report
    assert "missing required keys method, seed, status, eval_settings, matrix" in report
    assert list(read_table(report_dir, "toy-protocol__task_agnostic__results")["method"]) == ["alpha"]


def test_predictions_disagreeing_with_matrix_warn(tmp_path):
    run_dir = write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path, "beta", 0, {"task_agnostic": [[90], [50, 70]]})
    rows = single_label_rows("task_agnostic", [30, 80])
    pd.DataFrame(rows).to_csv(run_dir / "predictions.csv", index=False)

    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", None, bootstrap_samples=50, bootstrap_seed=0)
    assert report.warnings == [
        "alpha seed 0: AP from predictions.csv is 55.00 but the matrix gives 70.00. The bootstrap uses predictions.csv"
    ]


def test_missing_predictions_reported_not_crashing(tmp_path):
    run_dir = write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path, "beta", 0, {"task_agnostic": [[90], [50, 70]]})
    (run_dir / "predictions.csv").unlink()

    report_dir, _ = run_compare(tmp_path, "--no-plots")
    table = read_table(report_dir, "toy-protocol__task_agnostic__significance").set_index("method")
    assert table.loc["beta", "bootstrap_note"].startswith("n/a (")
    assert "predictions.csv not found" in table.loc["beta", "bootstrap_note"]


def test_requested_baseline_absent_falls_back(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})
    write_run(tmp_path, "beta", 0, {"task_agnostic": [[90], [50, 70]]})
    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", "delo", bootstrap_samples=0, bootstrap_seed=0)
    assert report.baseline == "alpha"
    assert report.baseline_note == "baseline 'delo' has no run in this group, so the best method by ap (alpha) is used"


def test_forgetting_metric_ranks_lowest_first(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})  # forgetting 30
    write_run(tmp_path, "beta", 0, {"task_agnostic": [[90], [85, 40]]})  # forgetting 5, lower AP
    report_dir, _ = run_compare(tmp_path, "--metric", "forgetting", "--no-plots")
    table = read_table(report_dir, "toy-protocol__task_agnostic__results")
    assert list(table["method"]) == ["beta", "alpha"]
    assert not (report_dir / "plots").exists()
    assert "Plots were not written (`--no-plots`)." in (report_dir / "report.md").read_text()


def test_tied_methods_share_rank(tmp_path):
    write_run(tmp_path, "alpha", 0, {"task_agnostic": [[90], [60, 80]]})  # AP 70
    write_run(tmp_path, "beta", 0, {"task_agnostic": [[90], [70, 70]]})  # AP 70
    write_run(tmp_path, "gamma", 0, {"task_agnostic": [[90], [50, 70]]})  # AP 60
    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", None, bootstrap_samples=0, bootstrap_seed=0)
    assert [method.label for method in report.methods] == ["alpha", "beta", "gamma"]
    assert [method.rank for method in report.methods] == [1, 1, 3]
    assert report.baseline == "alpha"
    assert "alpha, beta tie for rank 1" in report.baseline_note


def test_bootstrap_drops_seed_without_predictions(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "alpha", seed, {"task_agnostic": [[90], [60, 80]]})
        write_run(tmp_path, "beta", seed, {"task_agnostic": [[90], [50, 70]]})
    (tmp_path / "toy-protocol" / "beta" / "seed1" / "predictions.csv").unlink()

    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", None, bootstrap_samples=50, bootstrap_seed=0)
    result = report.comparisons[0].bootstrap
    assert result.seeds == [0]
    assert result.observed == pytest.approx(-10.0)
    assert result.note.startswith("seeds without usable predictions left out (seed 1: ")


def test_task_aware_multi_label_counts_task_classes(tmp_path):
    # Task 0 has classes a, b and task 1 has c, d. The rows list every seen label,
    # as predictions.csv does, but the task-aware score counts only the task's classes.
    def rows(predictions: list[str]) -> list[dict]:
        labels = ["a|c", "b", "c|b", "d"]
        tasks = [0, 0, 1, 1]
        return [
            {"setting": "task_aware", "task": task, "sample_id": f"s{index}", "missing_type": "complete",
             "label": label, "prediction": prediction}
            for index, (task, label, prediction) in enumerate(zip(tasks, labels, predictions))
        ]

    classes = [["a", "b"], ["c", "d"]]
    # Method: task 0 predicts a and nothing -> a: F1 1, b: F1 0 -> 50. Task 1 predicts c and c
    # -> c: TP 1, FP 1 -> 2/3; d: FN 1 -> 0 -> 100/3. AP = (50 + 100/3) / 2 = 125/3.
    write_run(tmp_path, "method", 0, {"task_aware": [[50.0], [50.0, 100 / 3]]},
              prediction_rows={"task_aware": rows(["a", "", "c", "c"])}, multi_label=True, task_classes=classes)
    write_run(tmp_path, "base", 0, {"task_aware": [[100.0], [100.0, 100.0]]},
              prediction_rows={"task_aware": rows(["a", "b", "c", "d"])}, multi_label=True, task_classes=classes)

    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", "base", bootstrap_samples=100, bootstrap_seed=0)
    assert report.warnings == []
    assert report.comparisons[0].bootstrap.observed == pytest.approx(125 / 3 - 100)


def test_task_aware_multi_label_needs_class_order(tmp_path):
    rows = [{"setting": "task_aware", "task": 0, "sample_id": "s0", "missing_type": "complete",
             "label": "a", "prediction": "a"}]
    write_run(tmp_path, "method", 0, {"task_aware": [[100.0]]}, prediction_rows={"task_aware": rows}, multi_label=True)
    write_run(tmp_path, "base", 0, {"task_aware": [[100.0]]}, prediction_rows={"task_aware": rows}, multi_label=True)
    groups, _ = group_runs(collect_runs(tmp_path))
    report = build_group_report(groups[0], "ap", "base", bootstrap_samples=10, bootstrap_seed=0)
    assert "class_order.json not found" in report.comparisons[0].bootstrap.note
