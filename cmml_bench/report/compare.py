"""Build the per-group comparison: summaries over seeds, ranking and significance tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmml_bench.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from cmml_bench.report import bootstrap
from cmml_bench.report.collect import MISSING_TYPES, RunGroup, SettingResult
from cmml_bench.report.stats import PairedTest, Summary, apply_holm, paired_t_test, summarize_values, wilcoxon_test

# Means closer than this many points share a rank.
TIE_TOLERANCE = 1e-9


@dataclass
class MethodSummary:
    """One method's results in a group, summarized over its seeds."""

    label: str
    seeds: list[int]
    metrics: dict[str, Summary]
    missing: dict[str, Summary]
    ap_curve: list[Summary]
    mean_matrix: list[list[float]]
    rank: int | None = None
    fewer_seeds: bool = False


@dataclass
class Comparison:
    """Tests of one method against the baseline."""

    label: str
    shared_seeds: list[int]
    mean_difference: float | None
    wilcoxon: PairedTest
    t_test: PairedTest
    bootstrap: bootstrap.BootstrapResult


@dataclass
class GroupReport:
    """Everything the tables, plots and report.md show for one group."""

    group: RunGroup
    metric: str
    methods: list[MethodSummary]
    baseline: str | None
    baseline_note: str | None
    comparisons: list[Comparison] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def summarize_method(label: str, seeds: dict[int, SettingResult], num_tasks: int) -> MethodSummary:
    """Average a method's metrics, missing-type scores, AP curve and matrix over seeds."""
    items = [seeds[seed] for seed in sorted(seeds)]
    metric_summaries = {name: summarize_values([item.metrics[name] for item in items]) for name in METRIC_NAMES}
    missing_summaries = {
        name: summarize_values([item.missing_breakdown.get(name) for item in items]) for name in MISSING_TYPES
    }

    curves = []
    for task in range(num_tasks):
        values = [float(np.mean(item.matrix[task])) if task < len(item.matrix) else None for item in items]
        curves.append(summarize_values(values))

    mean_matrix = []
    for row in range(num_tasks):
        cells = []
        for column in range(row + 1):
            values = [item.matrix[row][column] for item in items if row < len(item.matrix)]
            cells.append(float(np.mean(values)) if values else float("nan"))
        mean_matrix.append(cells)

    return MethodSummary(
        label=label,
        seeds=sorted(seeds),
        metrics=metric_summaries,
        missing=missing_summaries,
        ap_curve=curves,
        mean_matrix=mean_matrix,
    )


def rank_methods(methods: list[MethodSummary], metric: str) -> list[MethodSummary]:
    """Sort by the metric's mean, best first, and set ranks. Methods without a value come last."""
    higher_is_better = HIGHER_IS_BETTER[metric]

    def sort_key(method: MethodSummary) -> tuple:
        mean = method.metrics[metric].mean
        if mean is None:
            return (1, 0.0, method.label)
        return (0, -mean if higher_is_better else mean, method.label)

    ordered = sorted(methods, key=sort_key)
    previous_mean = None
    for position, method in enumerate(ordered, start=1):
        mean = method.metrics[metric].mean
        if mean is None:
            method.rank = None
        elif previous_mean is not None and abs(mean - previous_mean) <= TIE_TOLERANCE:
            # Tied methods share the better rank (competition ranking: 1, 2, 2, 4).
            method.rank = ordered[position - 2].rank
        else:
            method.rank = position
        previous_mean = mean
    return ordered


def choose_baseline(methods: list[MethodSummary], requested: str | None, metric: str) -> tuple[str | None, str | None]:
    """Return the baseline label and a note when the requested one is absent from the group."""
    ranked = [method for method in methods if method.rank is not None]
    best = ranked[0].label if ranked else None
    tied = [method.label for method in ranked if method.rank == 1]
    if requested is None:
        if best is None:
            return None, None
        note = f"baseline: the best method by {metric} ({best})"
        if len(tied) > 1:
            note += f". {', '.join(tied)} tie for rank 1, so the first by name is used"
        return best, note

    labels = [method.label for method in methods]
    if requested in labels:
        return requested, f"baseline: {requested} (chosen with --baseline)"
    return best, f"baseline {requested!r} has no run in this group, so the best method by {metric} ({best}) is used"


def metric_by_seed(seeds: dict[int, SettingResult], metric: str) -> dict[int, float]:
    return {seed: item.metrics[metric] for seed, item in seeds.items() if item.metrics[metric] is not None}


def compare_to_baseline(
    group: RunGroup,
    baseline: str,
    metric: str,
    bootstrap_samples: int,
    bootstrap_seed: int,
    prediction_cache: dict,
) -> list[Comparison]:
    """Run Wilcoxon, paired t-test (Holm-corrected per test) and the paired bootstrap for each method."""
    baseline_seeds = group.methods[baseline]
    baseline_values = metric_by_seed(baseline_seeds, metric)
    comparisons = []

    for label in sorted(group.methods):
        if label == baseline:
            continue
        method_values = metric_by_seed(group.methods[label], metric)
        shared = sorted(set(method_values) & set(baseline_values))
        method_array = [method_values[seed] for seed in shared]
        baseline_array = [baseline_values[seed] for seed in shared]
        mean_difference = float(np.mean(np.subtract(method_array, baseline_array))) if shared else None

        bootstrap_seeds = sorted(set(group.methods[label]) & set(baseline_seeds))
        comparisons.append(
            Comparison(
                label=label,
                shared_seeds=shared,
                mean_difference=mean_difference,
                wilcoxon=wilcoxon_test(method_array, baseline_array),
                t_test=paired_t_test(method_array, baseline_array),
                bootstrap=bootstrap_pair(
                    group, label, baseline, bootstrap_seeds, bootstrap_samples, bootstrap_seed, prediction_cache
                ),
            )
        )

    apply_holm([comparison.wilcoxon for comparison in comparisons])
    apply_holm([comparison.t_test for comparison in comparisons])
    return comparisons


def bootstrap_pair(
    group: RunGroup,
    label: str,
    baseline: str,
    seeds: list[int],
    samples: int,
    seed: int,
    prediction_cache: dict,
) -> bootstrap.BootstrapResult:
    """Bootstrap the AP difference of `label` against `baseline`, pooled over shared seeds."""
    if not seeds:
        return bootstrap.BootstrapResult(None, None, None, None, 0, [], note="n/a (no shared seed)")
    if samples < 1:
        return bootstrap.BootstrapResult(None, None, None, None, 0, seeds, note="n/a (--bootstrap-samples is 0)")

    frames = []
    usable_seeds = []
    errors = []
    for shared_seed in seeds:
        try:
            method_frame = load_predictions(group.methods[label][shared_seed], prediction_cache)
            baseline_frame = load_predictions(group.methods[baseline][shared_seed], prediction_cache)
        except bootstrap.PredictionsError as error:
            errors.append(f"seed {shared_seed}: {error}")
            continue
        frames += [method_frame, baseline_frame]
        usable_seeds.append(shared_seed)

    if not usable_seeds:
        return bootstrap.BootstrapResult(None, None, None, None, 0, seeds, note=f"n/a ({'; '.join(errors)})")
    try:
        outcomes = bootstrap.task_outcomes(frames, group.multi_label)
    except bootstrap.PredictionsError as error:
        return bootstrap.BootstrapResult(None, None, None, None, 0, usable_seeds, note=f"n/a ({error})")

    pairs = [(2 * index, 2 * index + 1) for index in range(len(usable_seeds))]
    differences, observed = bootstrap.paired_bootstrap_ap(outcomes, pairs, samples, seed)
    result = bootstrap.summarize_bootstrap(differences, observed, usable_seeds)
    if errors:
        result.note = f"seeds without usable predictions left out ({'; '.join(errors)})"
    return result


def load_predictions(item: SettingResult, cache: dict):
    """Read a run's predictions for its setting once per comparison run."""
    key = (item.run.path, item.setting)
    if key not in cache:
        try:
            frame = bootstrap.read_predictions(item.run.predictions_path, item.setting)
            if item.run.multi_label and item.setting == "task_aware":
                frame = bootstrap.restrict_to_task_classes(frame, bootstrap.read_task_classes(item.run.path))
            cache[key] = frame
        except bootstrap.PredictionsError as error:
            cache[key] = error
    value = cache[key]
    if isinstance(value, bootstrap.PredictionsError):
        raise value
    return value


def check_predictions_agree(group: RunGroup, prediction_cache: dict) -> list[str]:
    """Warn where the AP recomputed from predictions.csv differs from the stored matrix."""
    warnings = []
    for label, seeds in sorted(group.methods.items()):
        for seed, item in sorted(seeds.items()):
            try:
                frame = load_predictions(item, prediction_cache)
                outcomes = bootstrap.task_outcomes([frame], group.multi_label)
            except bootstrap.PredictionsError:
                continue
            recomputed = bootstrap.observed_ap(outcomes, 0)
            stored = item.metrics["ap"]
            if abs(recomputed - stored) > bootstrap.AP_AGREEMENT_TOLERANCE:
                warnings.append(
                    f"{label} seed {seed}: AP from predictions.csv is {recomputed:.2f} but the matrix gives "
                    f"{stored:.2f}. The bootstrap uses predictions.csv"
                )
    return warnings


def build_group_report(
    group: RunGroup,
    metric: str,
    baseline: str | None,
    bootstrap_samples: int,
    bootstrap_seed: int,
) -> GroupReport:
    """Summarize, rank and test one group of poolable runs."""
    num_tasks = group.num_tasks
    methods = [summarize_method(label, seeds, num_tasks) for label, seeds in group.methods.items()]
    methods = rank_methods(methods, metric)

    max_seeds = max(len(method.seeds) for method in methods)
    warnings = list(group.warnings)
    for method in methods:
        if len(method.seeds) < max_seeds:
            method.fewer_seeds = True
            warnings.append(
                f"{method.label} has {len(method.seeds)} seed(s) while another method has {max_seeds}, "
                f"so its mean and std rest on fewer runs"
            )

    chosen, baseline_note = choose_baseline(methods, baseline, metric)
    report = GroupReport(
        group=group, metric=metric, methods=methods, baseline=chosen, baseline_note=baseline_note, warnings=warnings
    )

    prediction_cache: dict = {}
    if chosen is not None and len(methods) > 1:
        report.comparisons = compare_to_baseline(
            group, chosen, metric, bootstrap_samples, bootstrap_seed, prediction_cache
        )
        report.warnings.extend(check_predictions_agree(group, prediction_cache))
    return report
