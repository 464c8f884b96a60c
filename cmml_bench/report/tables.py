"""Result tables of a group as Markdown, CSV, LaTeX and rich terminal tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.table import Table as RichTable

from cmml_bench.metrics import METRIC_NAMES
from cmml_bench.report.collect import MISSING_TYPES
from cmml_bench.report.compare import Comparison, GroupReport
from cmml_bench.report.stats import PairedTest, Summary

METRIC_TITLES = {
    "ap": "AP",
    "forgetting": "Forgetting",
    "forgetting_max": "Forgetting (max)",
    "bwt": "BWT",
    "aia": "AIA",
    "last": "Last",
}
MISSING_TITLES = {"complete": "Complete", "text_missing": "Text missing", "image_missing": "Image missing"}
RESULT_METRICS = ("ap", "forgetting", "bwt", "last", "aia")
FEWER_SEEDS_MARK = " (fewer)"


@dataclass
class Table:
    """One table: display cells for Markdown, LaTeX and the terminal, numbers for CSV."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    frame: pd.DataFrame


def format_summary(summary: Summary, decimals: int = 2) -> str:
    """Format 'mean ± std' (std with ddof=1). One seed shows only the mean, and no value shows n/a."""
    if summary.mean is None:
        return "n/a"
    if summary.std is None:
        return f"{summary.mean:.{decimals}f}"
    return f"{summary.mean:.{decimals}f} ± {summary.std:.{decimals}f}"


def format_p_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 1e-4:
        return f"{value:.1e}"
    return f"{value:.4f}"


def _seeds_cell(count: int, fewer: bool) -> str:
    return f"{count}{FEWER_SEEDS_MARK if fewer else ''}"


def results_table(report: GroupReport) -> Table:
    """Main table: one row per method, ranked by the chosen metric."""
    headers = ["Rank", "Method", "Seeds"] + [METRIC_TITLES[name] for name in RESULT_METRICS]
    headers += [MISSING_TITLES[name] for name in MISSING_TYPES]
    rows = []
    records = []
    for method in report.methods:
        row = [str(method.rank or "-"), method.label, _seeds_cell(len(method.seeds), method.fewer_seeds)]
        row += [format_summary(method.metrics[name]) for name in RESULT_METRICS]
        row += [format_summary(method.missing[name]) for name in MISSING_TYPES]
        rows.append(row)

        record = {"rank": method.rank, "method": method.label, "seeds": len(method.seeds)}
        record["seed_list"] = " ".join(str(seed) for seed in method.seeds)
        record["fewer_seeds"] = method.fewer_seeds
        for name in METRIC_NAMES:
            record[f"{name}_mean"] = method.metrics[name].mean
            record[f"{name}_std"] = method.metrics[name].std
        for name in MISSING_TYPES:
            record[f"{name}_mean"] = method.missing[name].mean
            record[f"{name}_std"] = method.missing[name].std
        records.append(record)

    title = f"Results ranked by {METRIC_TITLES[report.metric]} (mean ± sample std over seeds)"
    return Table("results", title, headers, rows, pd.DataFrame.from_records(records))


def forgetting_table(report: GroupReport) -> Table:
    """Diagonal and max forgetting side by side."""
    headers = ["Method", "Seeds", "Forgetting (diagonal)", "Forgetting (max)"]
    rows = []
    records = []
    for method in report.methods:
        rows.append(
            [
                method.label,
                _seeds_cell(len(method.seeds), method.fewer_seeds),
                format_summary(method.metrics["forgetting"]),
                format_summary(method.metrics["forgetting_max"]),
            ]
        )
        records.append(
            {
                "method": method.label,
                "seeds": len(method.seeds),
                "forgetting_mean": method.metrics["forgetting"].mean,
                "forgetting_std": method.metrics["forgetting"].std,
                "forgetting_max_mean": method.metrics["forgetting_max"].mean,
                "forgetting_max_std": method.metrics["forgetting_max"].std,
            }
        )
    title = "Forgetting, diagonal and max variants (points, lower is better)"
    return Table("forgetting", title, headers, rows, pd.DataFrame.from_records(records))


def _test_cell(test: PairedTest) -> str:
    return test.note if test.note else format_p_value(test.p_value)


def _bootstrap_cell(comparison: Comparison) -> str:
    result = comparison.bootstrap
    if result.observed is None:
        return result.note or "n/a"
    interval = f"{result.observed:+.2f} [{result.low:+.2f}, {result.high:+.2f}]"
    seeds = f"seed{'s' if len(result.seeds) != 1 else ''} {', '.join(str(seed) for seed in result.seeds)}"
    if result.note:
        return f"{interval} ({seeds}; {result.note})"
    return f"{interval} ({seeds})"


def significance_table(report: GroupReport) -> Table:
    """Tests of each method against the baseline."""
    metric_title = METRIC_TITLES[report.metric]
    headers = [
        "Method",
        "Paired seeds",
        f"Mean Δ {metric_title}",
        "Wilcoxon p",
        "Wilcoxon p (Holm)",
        "t-test p",
        "t-test p (Holm)",
        "Bootstrap Δ AP [95% CI]",
        "Bootstrap p",
    ]
    rows = []
    records = []
    for comparison in report.comparisons:
        difference = comparison.mean_difference
        rows.append(
            [
                comparison.label,
                str(len(comparison.shared_seeds)),
                "n/a" if difference is None else f"{difference:+.2f}",
                _test_cell(comparison.wilcoxon),
                format_p_value(comparison.wilcoxon.p_holm),
                _test_cell(comparison.t_test),
                format_p_value(comparison.t_test.p_holm),
                _bootstrap_cell(comparison),
                format_p_value(comparison.bootstrap.p_value),
            ]
        )
        records.append(_significance_record(report, comparison))

    title = f"Tests against the baseline {report.baseline} (Δ = method - baseline)"
    return Table("significance", title, headers, rows, pd.DataFrame.from_records(records))


def _significance_record(report: GroupReport, comparison: Comparison) -> dict:
    result = comparison.bootstrap
    return {
        "method": comparison.label,
        "baseline": report.baseline,
        "metric": report.metric,
        "paired_seeds": len(comparison.shared_seeds),
        "mean_difference": comparison.mean_difference,
        "wilcoxon_statistic": comparison.wilcoxon.statistic,
        "wilcoxon_p": comparison.wilcoxon.p_value,
        "wilcoxon_p_holm": comparison.wilcoxon.p_holm,
        "wilcoxon_note": comparison.wilcoxon.note,
        "ttest_statistic": comparison.t_test.statistic,
        "ttest_p": comparison.t_test.p_value,
        "ttest_p_holm": comparison.t_test.p_holm,
        "ttest_note": comparison.t_test.note,
        "bootstrap_ap_difference": result.observed,
        "bootstrap_ci_low": result.low,
        "bootstrap_ci_high": result.high,
        "bootstrap_p": result.p_value,
        "bootstrap_samples": result.samples,
        "bootstrap_seeds": " ".join(str(seed) for seed in result.seeds),
        "bootstrap_note": result.note,
    }


def to_markdown(table: Table) -> str:
    """Render a GitHub-flavoured Markdown table (pipes in cells escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    alignment = ["---"] * len(table.headers)
    lines = [line(table.headers), line(alignment)] + [line(row) for row in table.rows]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


def to_latex(table: Table, caption: str) -> str:
    """Render a booktabs tabular inside a table float."""
    columns = "l" * 2 + "r" * (len(table.headers) - 2)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(latex_escape(header) for header in table.headers) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_rich(table: Table, caption: str) -> RichTable:
    rich_table = RichTable(title=f"{caption}\n{table.title}")
    for index, header in enumerate(table.headers):
        rich_table.add_column(header, justify="left" if index < 2 else "right", overflow="fold")
    for row in table.rows:
        rich_table.add_row(*row)
    return rich_table


def write_table(table: Table, folder: Path, slug: str, caption: str) -> dict[str, Path]:
    """Write the table as .md, .csv and .tex and return extension -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{slug}__{table.name}"
    paths = {extension: folder / f"{stem}.{extension}" for extension in ("md", "csv", "tex")}
    paths["md"].write_text(f"{table.title}\n\n{to_markdown(table)}", encoding="utf-8")
    table.frame.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(to_latex(table, f"{caption}. {table.title}"), encoding="utf-8")
    return paths
