"""Plots of a group: score-matrix heat maps, AP curves, forgetting and missing-type bars.

Every plot is written as PNG and SVG with matplotlib's Agg backend, so no
display is needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmml_bench.report.collect import MISSING_TYPES, SETTING_TITLES  # noqa: E402
from cmml_bench.report.compare import GroupReport, MethodSummary  # noqa: E402
from cmml_bench.report.stats import Summary  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
# Horizontal shift between the curves of neighbouring methods, in task units,
# so that methods with identical scores stay visible.
CURVE_DODGE = 0.05
MISSING_LABELS = {"complete": "complete", "text_missing": "text missing", "image_missing": "image missing"}
PNG_DPI = 150


def method_colors(methods: list[MethodSummary]) -> dict[str, tuple]:
    """Give each method a fixed color (by sorted label) shared by all plots of a group."""
    palette = plt.get_cmap("tab10").colors
    labels = sorted(method.label for method in methods)
    return {label: palette[index % len(palette)] for index, label in enumerate(labels)}


def _subtitle(report: GroupReport) -> str:
    key = report.group.key
    setting = SETTING_TITLES.get(key.setting, key.setting)
    return f"{key.protocol}, {setting}"


def _save(figure: plt.Figure, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    figure.savefig(paths[0], dpi=PNG_DPI, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    plt.close(figure)
    return paths


def _safe(text: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "-" for character in text)


def _values(summaries: list[Summary]) -> tuple[np.ndarray, np.ndarray]:
    """Return means and stds. A single seed has no std (NaN), so no error bar is drawn."""
    means = np.array([np.nan if item.mean is None else item.mean for item in summaries], dtype=float)
    stds = np.array([np.nan if item.std is None else item.std for item in summaries], dtype=float)
    return means, stds


def plot_matrix(report: GroupReport, method: MethodSummary, folder: Path) -> list[Path]:
    """Draw one method's seed-averaged score matrix as an annotated heat map."""
    size = len(method.mean_matrix)
    grid = np.full((size, size), np.nan)
    for row, cells in enumerate(method.mean_matrix):
        grid[row, : len(cells)] = cells

    side = max(4.0, 0.62 * size + 2.2)
    figure, axes = plt.subplots(figsize=(side + 1.0, side))
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="score (%)")

    font_size = 9 if size <= 6 else 7
    for row in range(size):
        for column in range(row + 1):
            value = grid[row, column]
            if np.isnan(value):
                continue
            color = "black" if value > 60 else "white"
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=font_size, color=color)

    axes.set_xticks(range(size))
    axes.set_yticks(range(size))
    axes.set_xlabel("evaluated on task j")
    axes.set_ylabel("after training task i")
    seeds = len(method.seeds)
    axes.set_title(
        f"{method.label}: score matrix R[i][j]\n{_subtitle(report)}\nmean over {seeds} seed{'s' if seeds != 1 else ''}",
        fontsize=9,
    )
    return _save(figure, folder, f"{report.group.slug}__matrix__{_safe(method.label)}")


def plot_ap_curve(report: GroupReport, folder: Path) -> list[Path]:
    """Draw the AP after each task (mean of R[i][0..i]), one curve per method, std as error bars."""
    colors = method_colors(report.methods)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    center = (len(report.methods) - 1) / 2
    for index, method in enumerate(report.methods):
        means, stds = _values(method.ap_curve)
        tasks = np.arange(len(means)) + (index - center) * CURVE_DODGE
        axes.errorbar(
            tasks,
            means,
            yerr=stds,
            marker=MARKERS[index % len(MARKERS)],
            markersize=5,
            capsize=3,
            label=method.label,
            color=colors[method.label],
        )

    axes.set_xticks(range(report.group.num_tasks))
    axes.set_xlabel("after training task i")
    axes.set_ylabel("mean score on tasks 0..i (%)")
    axes.set_title(f"AP after each task\n{_subtitle(report)}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(figure, folder, f"{report.group.slug}__ap_curve")


def plot_forgetting(report: GroupReport, folder: Path) -> list[Path] | None:
    """Draw diagonal and max forgetting per method as bars with std error bars.

    Returns None when no method has a forgetting value (one task only).
    """
    methods = [method for method in report.methods if method.metrics["forgetting"].mean is not None]
    if not methods:
        return None

    diagonal, diagonal_std = _values([method.metrics["forgetting"] for method in methods])
    maximum, maximum_std = _values([method.metrics["forgetting_max"] for method in methods])
    positions = np.arange(len(methods))
    width = 0.38

    figure, axes = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) + 2.5), 4.2))
    axes.bar(positions - width / 2, diagonal, width, yerr=diagonal_std, capsize=3, label="diagonal", color="#4c72b0")
    axes.bar(positions + width / 2, maximum, width, yerr=maximum_std, capsize=3, label="max", color="#dd8452")
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xlim(-0.8, len(methods) - 0.2)
    axes.set_xticks(positions)
    axes.set_xticklabels([method.label for method in methods], rotation=30, ha="right")
    axes.set_ylabel("forgetting (points, lower is better)")
    axes.set_title(
        f"Forgetting per method (error bars: sample std over seeds)\n{_subtitle(report)}", fontsize=9
    )
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(figure, folder, f"{report.group.slug}__forgetting")


def plot_missing_types(report: GroupReport, folder: Path) -> list[Path] | None:
    """Draw the final score per missing type as grouped bars, one bar per method.

    Returns None when no run reports a missing-type breakdown.
    """
    if all(method.missing[name].mean is None for method in report.methods for name in MISSING_TYPES):
        return None

    colors = method_colors(report.methods)
    count = len(report.methods)
    width = 0.8 / count
    positions = np.arange(len(MISSING_TYPES))

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    top = 105.0
    for index, method in enumerate(report.methods):
        means, stds = _values([method.missing[name] for name in MISSING_TYPES])
        offsets = positions - 0.4 + width * (index + 0.5)
        axes.bar(offsets, means, width, yerr=stds, capsize=2, label=method.label, color=colors[method.label])
        upper = np.nan_to_num(means) + np.nan_to_num(stds)
        top = max(top, float(upper.max()) + 5.0)

    axes.set_xticks(positions)
    axes.set_xticklabels([MISSING_LABELS[name] for name in MISSING_TYPES])
    axes.set_ylabel("final score (%)")
    axes.set_ylim(0, top)
    axes.set_title(
        f"Final score per missing type (error bars: sample std over seeds)\n{_subtitle(report)}", fontsize=9
    )
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(figure, folder, f"{report.group.slug}__missing_types")


def plot_group(report: GroupReport, folder: Path) -> dict[str, list[Path]]:
    """Write every plot of a group and return plot name -> [png, svg]."""
    plots: dict[str, list[Path]] = {}
    for method in report.methods:
        plots[f"matrix: {method.label}"] = plot_matrix(report, method, folder)
    plots["ap_curve"] = plot_ap_curve(report, folder)

    forgetting_paths = plot_forgetting(report, folder)
    if forgetting_paths:
        plots["forgetting"] = forgetting_paths
    missing_paths = plot_missing_types(report, folder)
    if missing_paths:
        plots["missing_types"] = missing_paths
    return plots
