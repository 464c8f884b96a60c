"""The `cmml-bench compare` and `cmml-bench check` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from cmml_bench.metrics import METRIC_NAMES
from cmml_bench.report import check as checking
from cmml_bench.report.collect import Collection, NoRunsFoundError, RunGroup, collect_runs, group_runs
from cmml_bench.report.compare import build_group_report
from cmml_bench.report.markdown import GroupOutput, ReportSettings, write_report
from cmml_bench.report.plots import plot_group
from cmml_bench.report.tables import forgetting_table, results_table, significance_table, to_rich, write_table

# Exit code of `check` when run and reference describe different experiments
# (1 is kept for metrics that regressed).
MISMATCH_EXIT_CODE = 2


TABLE_WIDTH_WHEN_PIPED = 200


class MismatchError(click.ClickException):
    """Run and reference do not describe the same experiment, or a file is unusable."""

    exit_code = MISMATCH_EXIT_CODE


def group_caption(group: RunGroup) -> str:
    setting = "task-aware (task id given at test time)" if group.key.setting == "task_aware" else "task-agnostic"
    return f"{group.key.protocol}, {setting}, backbone {group.key.backbone}"


def compare_group(
    group: RunGroup,
    report_dir: Path,
    metric: str,
    baseline: str | None,
    samples: int,
    seed: int,
    console: Console,
    with_plots: bool = True,
) -> GroupOutput:
    """Summarize, test, tabulate and plot one group, and print its tables."""
    report = build_group_report(group, metric, baseline, samples, seed)
    tables = [results_table(report), forgetting_table(report)]
    if report.comparisons:
        tables.append(significance_table(report))

    caption = group_caption(group)
    table_files = {table.name: write_table(table, report_dir / "tables", group.slug, caption) for table in tables}
    for table in tables:
        console.print(to_rich(table, caption))
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] ({group.slug}): {warning}", highlight=False)

    plots = plot_group(report, report_dir / "plots") if with_plots else {}
    return GroupOutput(report=report, tables=tables, table_files=table_files, plots=plots)


def _print_collection_notes(collection: Collection, warnings: list[str], console: Console) -> None:
    for _, reason in collection.skipped:
        console.print(f"[yellow]warning[/yellow]: skipped unreadable run: {reason}", highlight=False)
    for run in collection.incomplete:
        console.print(
            f"[yellow]warning[/yellow]: left out incomplete run {run.path} "
            f"({run.result.get('tasks_completed', '?')} of {run.result.get('num_tasks', '?')} tasks)",
            highlight=False,
        )
    for warning in warnings:
        console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)


@click.command("compare")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder for report.md, tables/ and plots/ (default: DIRECTORY/report).",
)
@click.option("--baseline", default=None, help="Method every other method is tested against (default: the best by --metric).")
@click.option(
    "--metric", type=click.Choice(METRIC_NAMES), default="ap", show_default=True,
    help="Metric that ranks the methods and that the seed-level tests compare.",
)
@click.option(
    "--bootstrap-samples", type=click.IntRange(min=0), default=10000, show_default=True,
    help="Bootstrap replicates for the AP-difference interval (0 skips the bootstrap).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the bootstrap.")
@click.option("--plots/--no-plots", "with_plots", default=True, show_default=True, help="Write the PNG and SVG plots.")
def compare_command(
    directory: Path,
    report_dir: Path | None,
    baseline: str | None,
    metric: str,
    bootstrap_samples: int,
    seed: int,
    with_plots: bool,
) -> None:
    """Compare every run folder under DIRECTORY: tables, tests of significance and plots."""
    console = Console()
    if not console.is_terminal:
        # Rich wraps to 80 columns when output is piped, which splits every cell.
        console = Console(width=TABLE_WIDTH_WHEN_PIPED)
    directory = directory.resolve()
    report_dir = (report_dir or directory / "report").resolve()

    try:
        collection = collect_runs(directory, exclude=report_dir)
    except NoRunsFoundError as error:
        raise click.ClickException(str(error)) from None

    groups, warnings = group_runs(collection)
    _print_collection_notes(collection, warnings, console)
    report_dir.mkdir(parents=True, exist_ok=True)

    outputs = [
        compare_group(group, report_dir, metric, baseline, bootstrap_samples, seed, console, with_plots)
        for group in groups
    ]
    settings = ReportSettings(metric, bootstrap_samples, seed, baseline, with_plots)
    report_path = write_report(report_dir / "report.md", collection, outputs, warnings, settings)
    if not groups:
        console.print("[yellow]warning[/yellow]: no complete run to compare", highlight=False)
    console.print(f"report written to {report_path}", highlight=False)


@click.command("check")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--reference", "reference_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="Reference JSON to compare the run's metrics with.",
)
@click.option(
    "--write-reference", "write_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the run's metrics as a reference JSON to this file instead of checking.",
)
@click.option(
    "--tolerance", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
    help="Points by which a metric may be worse than the reference before the check fails.",
)
def check_command(run_dir: Path, reference_path: Path | None, write_path: Path | None, tolerance: float) -> None:
    """Check RUN_DIR's metrics against a reference, or write one with --write-reference.

    Exits 1 when a metric is worse than the reference by more than the
    tolerance, and 2 when run and reference describe different experiments.
    """
    if (reference_path is None) == (write_path is None):
        raise click.UsageError("give exactly one of --reference FILE and --write-reference FILE")

    try:
        result = checking.load_result(run_dir)
        if write_path is not None:
            _write_reference(result, write_path)
            return
        reference = checking.load_reference(reference_path)
    except checking.ReferenceMismatch as error:
        raise MismatchError(str(error)) from None

    _run_check(result, reference, reference_path, tolerance)


def _write_reference(result: dict, write_path: Path) -> None:
    reference = checking.build_reference(result)
    write_path.parent.mkdir(parents=True, exist_ok=True)
    write_path.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
    click.echo(f"reference written to {write_path}")


def _run_check(result: dict, reference: dict, reference_path: Path, tolerance: float) -> None:
    mismatches = checking.identity_mismatches(result, reference)
    if mismatches:
        raise MismatchError(
            f"run and reference {reference_path} describe different experiments: " + "; ".join(mismatches)
        )
    if result.get("status") != "complete":
        raise MismatchError(f"the run is {result.get('status')!r}, but only a complete run can be checked")
    if result.get("seed") != reference.get("seed"):
        click.echo(f"note: run seed {result.get('seed')} differs from reference seed {reference.get('seed')}")

    checks = checking.check_metrics(result, reference, tolerance)
    for item in checks:
        click.echo(checking.format_check(item, tolerance))

    failures = [item for item in checks if not item.passed]
    if failures:
        names = ", ".join(f"{item.setting}/{item.metric}" for item in failures)
        raise click.ClickException(f"{len(failures)} metric(s) worse than the reference by more than {tolerance}: {names}")
    click.echo(f"all {len(checks)} metrics within {tolerance} points of the reference")
