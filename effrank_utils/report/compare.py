"""Several studies side by side: one table, overlaid normalized curves, a warning wherever they were measured
with different estimators (so their numbers are not directly comparable), and, for one study trained under a
shorter and a longer student budget, whether the longer one moved the estimate (:func:`budget_checks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..base.storage import write_json
from ..estimate.convergence import describe_movements, movements
from ..estimate.curves import CROSSED, EffectiveRankResult
from ..records.run_folder import is_run_folder
from .analysis import analyze, band_stop_margin, study_convergence
from .plotting import save_figure
from .study import Study, load_finished_study

#: What an estimate depends on besides the model and the data: studies differing in one of these (or in the band
#: stop's noise-margin rule, ``band_stop_margin``) measure different things.
ESTIMATOR_FIELDS = ("init", "loss", "targets", "student_epochs", "student_patience", "student_schedule",
                    "student_lr", "kd_temperature", "kd_alpha", "validation_fraction", "reference", "band", "band_stop")


@dataclass(frozen=True)
class Compared:
    """One study of a comparison: its label, the study, and its analysis with its own band and reference."""

    label: str
    study: Study
    result: EffectiveRankResult


def load_studies(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Compared]:
    """Read and analyze each run folder (with its own band and reference); refuses a folder that is not a
    finished study, and labels that do not match the folders one to one."""
    if len(run_dirs) < 2:
        raise ValueError(f"run_dirs: a comparison needs at least 2 run folders, got {len(run_dirs)}")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"labels: {len(labels)} label(s) for {len(run_dirs)} run folder(s); give one per folder "
                         "or none")
    seen = [Path(r).resolve() for r in run_dirs]
    twice = next((r for i, r in enumerate(run_dirs) if seen[i] in seen[:i]), None)
    if twice is not None:
        raise ValueError(f"run_dirs: {twice} is given twice; give each run folder once")
    compared = []
    for i, run_dir in enumerate(run_dirs):
        if not is_run_folder(run_dir):
            raise ValueError(f"run_dirs: {run_dir} is not an effrank run folder (no config.json written by "
                             "effrank)")
        study = load_finished_study(run_dir)
        label = labels[i] if labels is not None else Path(run_dir).name
        compared.append(Compared(label, study, analyze(study, study.config.band, study.config.reference)))
    return compared


def check_out_dir(out_dir: str | Path, run_dirs: Sequence[str | Path]) -> None:
    """Refuse an ``--out`` that is a file, a run folder or inside one (a comparison written there would make the
    next sweep refuse the folder)."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out: {out_dir} is a file; give a folder for the comparison")
    run_dirs = {Path(r).resolve() for r in run_dirs}
    for folder in (out_dir, *out_dir.parents):
        if folder in run_dirs or is_run_folder(folder):
            where = "a run folder" if folder == out_dir else f"inside the run folder {folder}"
            raise ValueError(f"--out: {out_dir} is {where}; give a folder of its own for the comparison")


def _estimator(study: Study) -> dict:
    fields = {name: getattr(study.config, name) for name in ESTIMATOR_FIELDS}
    return fields | {"band_stop_margin": band_stop_margin(study)}


def estimator_warnings(compared: Sequence[Compared]) -> list[str]:
    """One line per estimator field whose value differs between the studies."""
    values = [_estimator(c.study) for c in compared]
    lines = []
    for name in values[0]:
        seen = [v[name] for v in values]
        if any(s != seen[0] for s in seen[1:]):
            shown = ", ".join(f"{c.label}: {v!r}" for c, v in zip(compared, seen))
            lines.append(f"{name} differs ({shown}): these regions were measured with different estimators and "
                         "are not directly comparable")
    return lines


#: What a result was computed with besides its config (:mod:`effrank_utils.run.provenance`): studies that differ in
#: one of these may differ in the last digits, or more.
ENVIRONMENT_FIELDS = ("effrank", "torch", "torchvision", "timm", "numpy", "torch_threads", "device", "commit")


def environment_warnings(compared: Sequence[Compared]) -> list[str]:
    """One line per environment field whose value differs between the studies (their last runs), and one per study
    computed under several environments."""
    lines = []
    last = [c.study.environments[-1] if c.study.environments else {} for c in compared]
    for name in ENVIRONMENT_FIELDS:
        seen = [env.get(name) for env in last]
        if any(s != seen[0] for s in seen[1:]):
            shown = ", ".join(f"{c.label}: {v!r}" for c, v in zip(compared, seen))
            lines.append(f"{name} differs ({shown}): results may differ for that reason alone")
    for c in compared:
        if len(c.study.environments) > 1:
            differ = sorted({k for env in c.study.environments for k in ENVIRONMENT_FIELDS
                             if env.get(k) != c.study.environments[0].get(k)})
            lines.append(f"{c.label} was computed under {len(c.study.environments)} environments (they differ in "
                         f"{', '.join(differ)}): its students may not be comparable with each other")
    return lines


def comparison_warnings(compared: Sequence[Compared]) -> list[str]:
    """Every reason the studies' numbers are not directly comparable: the estimator, then the environment."""
    return estimator_warnings(compared) + environment_warnings(compared)


#: The fields of a student's training budget: two studies that differ only in these (same teacher, same estimator
#: otherwise) are one study trained shorter and longer, and their difference tells whether the students had
#: converged.
BUDGET_FIELDS = ("student_epochs", "student_patience")


def _budget(c: Compared) -> tuple[int, ...]:
    return tuple(getattr(c.study.config, name) for name in BUDGET_FIELDS)


def budget_checks(compared: Sequence[Compared]) -> list[dict]:
    """For each pair of studies that differ only in :data:`BUDGET_FIELDS` (same model, data and teacher accuracy,
    same estimator otherwise), one no shorter than the other in each field, shorter first: how far r_lo, r_hi and
    the knee moved from the shorter to the longer budget, against the convergence tolerance. One run's own verdict
    cannot see what a longer budget would still change; this pair can.

    Returns one dict per pair: ``shorter``, ``longer`` (labels), ``settled`` and ``movements`` (name ->
    ``distance``, ``tolerance``, ``settled``), and ``verdict`` in words.
    """
    def same_study(a: Compared, b: Compared) -> bool:
        ea, eb = _estimator(a.study), _estimator(b.study)
        fixed = [n for n in ea if n not in BUDGET_FIELDS]
        return (all(ea[n] == eb[n] for n in fixed) and a.study.config.seed == b.study.config.seed
                and a.study.teacher_accuracy == b.study.teacher_accuracy
                and (a.study.config.model, a.study.config.dataset) == (b.study.config.model, b.study.config.dataset))

    checks = []
    for i, a in enumerate(compared):
        for b in compared[i + 1:]:
            shorter, longer = sorted((a, b), key=_budget)
            ordered = all(x <= y for x, y in zip(_budget(shorter), _budget(longer)))  # longer in each field
            if _budget(a) == _budget(b) or not ordered or not same_study(a, b):
                continue
            moved = movements(shorter.result, longer.result)
            settled = all(m.settled for m in moved)
            checks.append({
                "shorter": shorter.label, "longer": longer.label, "settled": settled,
                "movements": {m.name: m.to_dict() for m in moved},
                "verdict": (f"from {shorter.label} to {longer.label} (a longer student budget): "
                            f"{describe_movements(moved)}: "
                            + ("settled" if settled else "not converged, train longer"))})
    return checks


def comparison_table(compared: Sequence[Compared]) -> pd.DataFrame:
    """One line per study: data and model, teacher accuracy and size, region, knee, intervals, convergence and
    the estimator."""
    rows = []
    for c in compared:
        config, result = c.study.config, c.result
        found = study_convergence(c.study, result.band, config.reference)
        intervals = {f"{k} 95%": v.describe() for k, v in (result.intervals or {}).items()}
        rows.append({"study": c.label, "model": config.model, "dataset": config.dataset,
                     "teacher_accuracy": c.study.teacher_accuracy,
                     "teacher_params": int(c.study.table["teacher_params"].iloc[0]),
                     "r_lo": result.low.describe(), "r_hi": result.high.describe(), "knee": result.describe_knee(),
                     **intervals, "converged": None if found is None else found.converged,
                     **{k: v if not isinstance(v, tuple) else list(v) for k, v in _estimator(c.study).items()}})
    return pd.DataFrame(rows)


def plot_comparison(compared: Sequence[Compared]) -> Figure:
    """Every study's normalized points and monotone fit on one rank axis, its region shaded and knee marked."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    handles, labels = [], []  # given explicitly: a label starting with "_" is then shown, not dropped
    for i, c in enumerate(compared):
        color, result = f"C{i}", c.result
        ax.plot(result.ranks, result.normalized, "o", color=color, ms=4)
        r = np.linspace(result.ranks[0], result.ranks[-1], 600)
        (line,) = ax.plot(r, result.curve(r), color=color, lw=2)
        handles.append(line)
        labels.append(f"{c.label}: [{result.low.describe()}, {result.high.describe()}], knee "
                      f"{result.describe_knee()}")
        if result.low.status == CROSSED and result.high.status == CROSSED:
            ax.axvspan(result.low.rank, result.high.rank, color=color, alpha=0.12)
        if result.knee is not None:
            ax.plot([result.knee], [result.curve(result.knee)], "D", color=color, ms=7, mec="k", zorder=4)
    for lo, hi in {tuple(c.result.band) for c in compared}:
        ax.axhline(lo, color="0.4", ls=":", lw=1)
        ax.axhline(hi, color="0.4", ls=":", lw=1)
    ax.set(xscale="log", xlabel="rank r (log axis; regions and knees are computed on the linear axis)",
           ylabel="accuracy / reference", title="Effective rank: studies compared")
    ranks = sorted({int(r) for c in compared for r in c.result.ranks})
    ax.set_xticks(ranks, labels=[str(r) for r in ranks], fontsize=7)
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    legend = ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below the axes
    for text in legend.get_texts():
        text.set_parse_math(False)  # labels are plain text: "$" is a dollar sign, not mathtext
    fig.tight_layout()
    plt.close(fig)
    return fig


def save_comparison(compared: Sequence[Compared], out_dir: str | Path) -> list[Path]:
    """``comparison.json`` (table and warnings) in ``out_dir`` and the figure in ``out_dir/figures`` (PNG, SVG);
    returns the paths."""
    out_dir = Path(out_dir)
    paths = save_figure(plot_comparison(compared), out_dir, "comparison")
    table = comparison_table(compared).replace({np.nan: None})
    paths.append(write_json(out_dir / "comparison.json", {
        "run_dirs": [str(c.study.run_dir) for c in compared], "warnings": comparison_warnings(compared),
        "budget_checks": budget_checks(compared), "table": table.to_dict(orient="records")}))
    return paths
