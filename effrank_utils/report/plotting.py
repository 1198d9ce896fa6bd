"""Figures of the study: teacher training curves, the sweep as it fills in, the effective-rank plot, and region
and knee against the students' training budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..estimate.curves import CROSSED, QUANTITY_LABELS, EffectiveRankResult
from ..records.run_folder import FIGURE_DIR

if TYPE_CHECKING:
    from ..estimate.convergence import Convergence
    from .study import Study


def save_figure(fig: Figure, run_dir: str | Path, name: str, formats: tuple[str, ...] = ("png", "svg")
                ) -> list[Path]:
    """Save ``fig`` as ``run_dir/figures/<name>.<fmt>`` for each format."""
    folder = Path(run_dir) / FIGURE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{fmt}" for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def plot_teacher_history(history: list[dict], note: str = "loaded from teacher_checkpoint, not trained") -> Figure:
    """Teacher loss and test accuracy (and validation accuracy, when there is a split) per epoch; with no
    history (a loaded teacher), a figure that says ``note`` instead."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    if not history:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, f"no training curves:\n{note}", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        plt.close(fig)
        return fig
    frame = pd.DataFrame(history)
    if "val_accuracy" in frame:
        ax_acc.plot(frame["epoch"], frame["val_accuracy"], color="C2", label="validation")
    ax_loss.plot(frame["epoch"], frame["loss"], color="C0")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Teacher: loss")
    ax_acc.plot(frame["epoch"], frame["test_accuracy"], color="C1", label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title=f"Teacher: final {frame['test_accuracy'].iloc[-1]:.2%} (test)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_sweep(table: pd.DataFrame, teacher_accuracy: float) -> Figure:
    """Accuracy vs rank of the rows finished so far (raw points, teacher as a line)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ok = table[table["status"] == "ok"]
    ax.plot(ok["rank"], ok["final_accuracy"], "o", color="C0", label="student (final epoch)")
    ax.axhline(teacher_accuracy, color="k", lw=1, ls="--", label=f"teacher {teacher_accuracy:.2%}")
    failed = table[table["status"] != "ok"]
    if len(failed):
        ax.plot(failed["rank"], np.zeros(len(failed)), "x", color="C3", label="failed")
    ax.set(xlabel="rank r", ylabel="test top-1", title=f"Rank sweep: {len(table)} student(s) finished")
    if len(table):
        ax.set_xscale("log")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_effective_rank(study: "Study", result: EffectiveRankResult, log_x: bool = False) -> Figure:
    """The study's figure: points (with seed spread), monotone PCHIP fit, band, region, knee and secant.

    Left axis: accuracy normalized by the reference; right axis: absolute accuracy; top axis: compression.
    ``log_x`` changes only the display; the knee is defined on the linear rank axis. On the linear axis the view
    is focused on the region and knee (up to the first swept rank at twice the largest of them; a note says
    which ranks lie beyond); the log axis shows every rank, labelled with its value. An undefined knee draws no
    diamond and says so in the legend. Bootstrap intervals (several seeds) are horizontal bars at their level;
    a censored one is dashed and annotated with the share of resamples that missed the level. Compression
    below 1x (a student larger than the teacher) is marked with ``*`` on the top axis.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ref = result.reference
    grouped = study.table.groupby("rank")["final_accuracy"]
    mean, low, high = grouped.mean() / ref, grouped.min() / ref, grouped.max() / ref
    spread = np.clip([(mean - low).to_numpy(), (high - mean).to_numpy()], 0, None)  # equal seeds: mean may round
    ax.errorbar(mean.index, mean.to_numpy(), yerr=spread, fmt="o",
                color="C0", capsize=3, label="students (mean, seed range)", zorder=3)
    r = np.linspace(result.ranks[0], result.ranks[-1], 800)
    ax.plot(r, result.curve(r), color="C0", lw=2, label="monotone PCHIP fit")
    ax.plot(r, result.secant(r), color="0.5", ls=":", lw=1.2, label="endpoint secant")
    lo, hi = result.band
    ax.axhspan(lo, hi, color="C2", alpha=0.15, label=f"band {lo:.0%}-{hi:.0%}")
    for crossing in (result.low, result.high):
        if crossing.status == CROSSED:  # labelled along the line at the top, clear of the curve and the points
            ax.axvline(crossing.rank, color="C2", lw=1.2)
            ax.annotate(f"r={crossing.rank:.1f}", (crossing.rank, 1), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(2, -4), rotation=90, va="top", fontsize=8, color="C2")
    if result.low.status == CROSSED and result.high.status == CROSSED:
        ax.axvspan(result.low.rank, result.high.rank, color="C2", alpha=0.08)
    if result.knee is not None:
        ax.plot([result.knee], [result.curve(result.knee)], "D", color="C3", ms=10, mfc="none", mew=2, zorder=4,
                label=f"knee r={result.knee:.1f}")  # hollow: a student's point under it stays visible
    else:
        ax.plot([], [], " ", label=f"knee {result.knee_status}")
    _intervals(ax, result)
    ax.set(xlabel="rank r", ylabel=f"accuracy / reference ({ref:.4f})",
           title=f"{study.config.preset}: {study.config.model} on {study.config.dataset} "
                 f"({study.config.init} init, {study.config.loss} loss)"
                 + (f"\n{study.describe_missing()}" if not study.complete else ""))
    visible = result.ranks
    if log_x:
        ax.set_xscale("log")
        shown = _readable(visible, log_x=True)
        ax.set_xticks(visible[shown], labels=[f"{r:g}" for r in visible[shown]])
        ax.minorticks_off()
    elif (limit := focus_limit(result)) is not None:
        pad = 0.02 * (limit - visible[0])
        ax.set_xlim(visible[0] - pad, limit + pad)
        beyond = visible[visible > limit]
        hidden = f"rank {beyond[0]:g} lies" if beyond.size == 1 else f"ranks {beyond[0]:g}-{beyond[-1]:g} lie"
        ax.text(0.99, 0.03, f"focused on the region: {hidden} to the right (log axis: all ranks)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.35")
        visible = visible[visible <= limit]
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    absolute = ax.secondary_yaxis("right", functions=(lambda y: y * ref, lambda y: y / ref))
    absolute.set_ylabel("test top-1 (absolute)")
    _compression_axis(ax, study, visible, log_x)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _intervals(ax: plt.Axes, result: EffectiveRankResult) -> None:
    """Bootstrap intervals as bars at their level (the knee's at its height); censored ones dashed and annotated."""
    if not result.intervals:
        return
    heights = {"region_low": result.band[0], "region_high": result.band[1]}
    if result.knee is not None:
        heights["knee"] = float(result.curve(result.knee))
    labelled: set[bool] = set()
    for name, y in heights.items():
        interval = result.intervals.get(name)
        if interval is None:
            continue
        color = "C3" if name == "knee" else "C2"
        if interval.low is not None:
            label = None
            if interval.censored not in labelled:
                labelled.add(interval.censored)
                label = ("95% bootstrap interval, censored (dashed)" if interval.censored
                         else "95% bootstrap interval")
            ax.hlines(y, interval.low, interval.high, colors=color, lw=4, alpha=0.45, zorder=2, label=label,
                      linestyles="--" if interval.censored else "-")
        if interval.censored:
            x = interval.high if interval.high is not None else result.ranks[-1]
            ax.annotate(f"{QUANTITY_LABELS.get(name, name)} {interval.describe()}", (x, y), textcoords="offset points",
                        xytext=(0, 5), ha="right", fontsize=7, color=color)


def focus_limit(result: EffectiveRankResult) -> float | None:
    """The right end of the linear axis's focus: the first swept rank at or above twice the largest crossing or
    knee; None when that is the last rank (nothing to hide) or nothing was crossed."""
    found = [r for r in (result.low.rank, result.high.rank, result.knee) if r is not None]
    if not found:
        return None
    above = result.ranks[result.ranks >= 2 * max(found)]
    return float(above[0]) if above.size and above[0] < result.ranks[-1] else None


def _readable(ranks: np.ndarray, log_x: bool, max_ticks: int = 8) -> list[int]:
    """Indices of ranks spaced out enough (on the displayed scale) to label them without overlap."""
    position = np.log(ranks) if log_x else ranks
    gap = (position[-1] - position[0]) / max_ticks
    keep = [0]
    for i in range(1, len(ranks)):
        if position[i] - position[keep[-1]] >= gap:
            keep.append(i)
    return keep


def _compression_axis(ax: plt.Axes, study: "Study", ranks: np.ndarray, log_x: bool) -> None:
    """Top axis: the compression ratio at the shown swept ranks spaced out enough to be read; below 1x (a student
    larger than the teacher) marked with ``*``."""
    per_rank = study.table.groupby("rank")["params"].first()
    teacher = float(study.table["teacher_params"].iloc[0])
    keep = ranks[_readable(ranks, log_x)]
    ratios = [teacher / float(per_rank.loc[r]) for r in keep]
    top = ax.secondary_xaxis("top")
    top.set_xticks(keep, labels=[f"{c:.1f}x" if c >= 1 else f"{c:.2f}x*" for c in ratios], fontsize=7)
    for label, ratio in zip(top.get_xticklabels(), ratios):
        if ratio < 1:
            label.set_color("C3")
    larger = "; * student larger than the teacher" if min(ratios) < 1 else ""
    top.set_xlabel(f"compression (teacher params / student params{larger})", fontsize=8)


def plot_convergence(studies: Mapping[str, "Convergence"]) -> Figure:
    """r_lo, r_hi (band) and knee against the students' budget, one colour per study (e.g. per init), on a
    log2 budget axis; the title of each legend entry carries its verdict."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (label, found) in enumerate(studies.items()):
        table, color = found.table(), f"C{i}"
        verdict = "converged" if found.converged else "not converged"
        ax.fill_between(table["budget"], table["region_low"], table["region_high"], color=color, alpha=0.18,
                        step=None, label=f"{label}: region [r_lo, r_hi] ({verdict})")
        for name, style in (("region_low", "-"), ("region_high", "-"), ("knee", "--")):
            ax.plot(table["budget"], table[name], style, marker="o" if name != "knee" else "D", ms=4, color=color,
                    label=f"{label}: knee" if name == "knee" else None)
    ax.set_xscale("log", base=2)
    budgets = np.array(sorted({b for found in studies.values() for b in found.budgets}), dtype=float)
    ax.set_xlim(budgets[0] / 1.25, budgets[-1] * 1.25)  # also when no level was crossed at any budget
    shown = budgets[_readable(budgets, log_x=True, max_ticks=12)]
    ax.set_xticks(shown, labels=[f"{b:g}" for b in shown])
    ax.minorticks_off()
    ax.set(xlabel="student budget (epochs; students that stopped earlier keep their last accuracy)",
           ylabel="rank", title="Region and knee against the students' training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_spectra(table: pd.DataFrame, singular_values: Mapping[str, list], measure: str = "entropy_rank") -> Figure:
    """Left: a heat map of ``measure`` over blocks x kinds of map. Right: every map's singular values (divided by
    its largest), one colour per kind of map."""
    fig, (heat, lines) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    kinds = list(pd.unique(table["map"]))  # in module order: qkv, proj, fc1, fc2
    grid = table.pivot_table(index="block", columns="map", values=measure, aggfunc="median")[kinds]
    image = heat.imshow(grid.to_numpy(float), aspect="auto", cmap="viridis")
    heat.set_xticks(range(grid.shape[1]), labels=list(grid.columns))
    heat.set_yticks(range(grid.shape[0]), labels=[str(b) for b in grid.index])
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        heat.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w")
    heat.set(xlabel="map", ylabel="block", title=measure.replace("_", " ") + " per map")
    fig.colorbar(image, ax=heat, shrink=0.8)
    for row in table.itertuples():
        s = np.asarray(singular_values[row.path], dtype=float)
        lines.plot(np.arange(1, s.size + 1), s / s[0], color=f"C{kinds.index(row.map)}", lw=0.8, alpha=0.6)
    for i, kind in enumerate(kinds):
        lines.plot([], [], color=f"C{i}", label=kind)
    lines.set(yscale="log", xlabel="index k", ylabel="singular value / largest", title="teacher spectra")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
