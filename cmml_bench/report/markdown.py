"""The stand-alone `report.md` that explains and links every table and plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmml_bench.report.collect import SETTING_TITLES, Collection
from cmml_bench.report.compare import GroupReport
from cmml_bench.report.stats import WILCOXON_MIN_PAIRS
from cmml_bench.report.tables import METRIC_TITLES, Table, to_markdown


@dataclass
class GroupOutput:
    """A group's report with the tables and files written for it."""

    report: GroupReport
    tables: list[Table]
    table_files: dict[str, dict[str, Path]]
    plots: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class ReportSettings:
    """The compare options that report.md states."""

    metric: str
    bootstrap_samples: int
    bootstrap_seed: int
    requested_baseline: str | None
    with_plots: bool = True


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def intro_section(collection: Collection, settings: ReportSettings) -> list[str]:
    total = len(collection.complete) + len(collection.incomplete) + len(collection.skipped)
    metric = METRIC_TITLES[settings.metric]
    return [
        "# cmml-bench comparison report",
        "",
        f"Runs read from `{collection.root}`: {total} run folder(s), {len(collection.complete)} complete, "
        f"{len(collection.incomplete)} incomplete (left out), {len(collection.skipped)} unreadable (skipped).",
        "",
        "## How to read this report",
        "",
        "- R[i][j] is the score (percent) on the test split of task j after training task i, with tasks "
        "numbered from 0. The score is accuracy for single-label protocols and macro F1 over the seen "
        "labels for multi-label ones.",
        "- **AP**: mean of the final row R[T-1][j]. **Forgetting** (diagonal): mean over j < T-1 of "
        "R[j][j] - R[T-1][j]. **Forgetting (max)**: the same with the best score of task j before the "
        "final task, max over l in [j, T-2] of R[l][j], in place of R[j][j]. **BWT**: mean over j < T-1 of "
        "R[T-1][j] - R[j][j]. **Last**: R[T-1][T-1]. **AIA**: mean over i of the mean of R[i][0..i]. "
        "Complete, Text missing and Image missing are the final scores on the test samples of that "
        "missing type, over all tasks.",
        "- Cells show mean ± sample standard deviation (ddof = 1) over seeds. A method with one seed "
        "shows the mean alone. `(fewer)` marks a method with fewer seeds than another method of its group.",
        f"- Methods are ranked by {metric} ({'lower' if settings.metric.startswith('forgetting') else 'higher'} "
        "is better), within a group only. Runs are pooled in a group only when protocol, evaluation "
        "setting, protocol hash, class-order hash, backbone and subset agree. Task-aware results (the "
        "true task id given at test time) are never ranked with task-agnostic ones.",
        "- Tests compare each method with the baseline of its group. Over seeds, on runs that share a "
        f"seed: the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, two-sided, which needs "
        f"{WILCOXON_MIN_PAIRS} non-zero paired differences to reach p < 0.05) and the paired t-test "
        "(`scipy.stats.ttest_rel`, two-sided), each on the ranking metric. Holm's correction is applied "
        "per test across the methods compared in a group.",
        f"- The paired bootstrap uses `predictions.csv`: {settings.bootstrap_samples} replicates (seed "
        f"{settings.bootstrap_seed}) resample the test samples within each task, recompute every task's "
        "score and the AP of both methods on the same resample, and give a 95% percentile interval of the "
        "AP difference (method - baseline). With several shared seeds, every seed uses the same resample "
        "and the difference is the mean over seeds, so the interval covers test-sample variation, not "
        "training variation across seeds. Its p-value is 2 x the smaller share of replicates on either "
        "side of 0. It is not Holm-corrected.",
        "- Plots show means over seeds with the sample std as error bars (none for a single seed). The "
        "curves of the AP plot are shifted apart by 0.05 task so that equal scores stay visible.",
        "",
    ]


def warnings_section(collection: Collection, general_warnings: list[str]) -> list[str]:
    lines: list[str] = []
    if general_warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in general_warnings] + [""]

    if collection.incomplete:
        lines += [
            "## Incomplete runs (left out of every table)",
            "",
            "| run folder | method | seed | tasks completed |",
            "| --- | --- | --- | --- |",
        ]
        for run in collection.incomplete:
            progress = f"{run.result.get('tasks_completed', '?')} of {run.result.get('num_tasks', '?')}"
            lines.append(f"| `{_relative(run.path, collection.root)}` | {run.method} | {run.seed} | {progress} |")
        lines.append("")

    if collection.skipped:
        lines += ["## Unreadable runs (skipped)", ""]
        lines += [f"- {reason}" for _, reason in collection.skipped]
        lines.append("")
    return lines


def group_section(output: GroupOutput, report_dir: Path, with_plots: bool) -> list[str]:
    report = output.report
    key = report.group.key
    score = "macro F1" if report.group.multi_label else "accuracy"
    seeds = ", ".join(f"{method.label}: {len(method.seeds)}" for method in report.methods)
    lines = [
        f"## {key.protocol}: {SETTING_TITLES.get(key.setting, key.setting)}",
        "",
        f"Protocol hash `{key.protocol_hash}`, class-order hash `{key.class_order_hash}`, backbone "
        f"`{key.backbone}`, subset `{key.subset}`. {report.group.num_tasks} tasks, score: {score}. "
        f"Seeds per method: {seeds}.",
        "",
    ]
    if report.warnings:
        lines += ["Warnings:", ""] + [f"- {warning}" for warning in report.warnings] + [""]

    for table in output.tables:
        files = output.table_files[table.name]
        links = ", ".join(f"[{extension}]({_relative(path, report_dir)})" for extension, path in files.items())
        lines += [f"### {table.title}", ""]
        if table.name == "significance":
            lines += [report.baseline_note or "", ""]
        lines += [to_markdown(table), f"Files: {links}", ""]

    if len(report.methods) == 1:
        lines += ["No tests: the group has a single method.", ""]
    elif not report.comparisons:
        lines += [f"No tests: no method has a value for {METRIC_TITLES[report.metric]}.", ""]

    lines += ["### Plots", ""]
    if not with_plots:
        lines += ["Plots were not written (`--no-plots`).", ""]
    for name, paths in output.plots.items():
        png, svg = paths
        lines += [
            f"**{name}** ([SVG]({_relative(svg, report_dir)}))",
            "",
            f"![{name}]({_relative(png, report_dir)})",
            "",
        ]
    return lines


def write_report(
    path: Path,
    collection: Collection,
    outputs: list[GroupOutput],
    general_warnings: list[str],
    settings: ReportSettings,
) -> Path:
    """Write report.md to `path`."""
    lines = intro_section(collection, settings)
    lines += warnings_section(collection, general_warnings)
    if not outputs:
        lines += ["No complete run to compare.", ""]
    for output in outputs:
        lines += group_section(output, path.parent, settings.with_plots)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
