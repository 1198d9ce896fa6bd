"""From a finished (or partial) sweep to the study's answer: region, knee, summary and sensitivity."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..base.storage import read_json, write_json
from ..estimate.convergence import Convergence, convergence
from ..estimate.curves import DEFAULT_BAND, QUANTITY_LABELS, EffectiveRankResult, effective_rank, sensitivity_table
from ..estimate.noise import MARGIN_RULE, MARGIN_RULE_WORDS, UNRECORDED_MARGIN
from ..estimate.spectra import MEASURES, summarize
from ..records.run_folder import COVERAGE_JSON, SUMMARY_JSON, rows_digest
from .plotting import plot_convergence, plot_effective_rank, plot_spectra, save_figure
from .study import Study

log = logging.getLogger(__name__)


def reference_value(study: Study, reference: str | float) -> float | str:
    """``teacher`` -> the teacher's accuracy; ``best_student`` and numbers pass through."""
    return study.teacher_accuracy if reference == "teacher" else reference


def study_settings(study: Study, band: Sequence[float] | None = None, reference: str | float | None = None
                   ) -> tuple[tuple[float, float], str | float]:
    """The band and reference to analyze with: those given, else the study's own (from its config)."""
    return tuple(band or study.config.band), reference if reference is not None else study.config.reference


def analyze(study: Study, band: Sequence[float] = DEFAULT_BAND, reference: str | float = "teacher",
            n_bootstrap: int = 200) -> EffectiveRankResult:
    """Region and knee of the study for a band and a reference (``teacher``, ``best_student`` or a number).

    This is what the interactive panel calls on every change.
    """
    return effective_rank(study.ranks, study.accuracy, reference_value(study, reference), band,
                          n_bootstrap=n_bootstrap)


def study_convergence(study: Study, band: Sequence[float] = DEFAULT_BAND, reference: str | float = "teacher"
                      ) -> Convergence | None:
    """Region and knee against the students' budget (a best-student reference is re-resolved at each budget);
    ``None`` for a sweep made without per-epoch records."""
    if study.epochs.empty:
        return None
    stop_reasons = study.table["stop_reason"].tolist() if "stop_reason" in study.table else []
    return convergence(study.epochs, reference_value(study, reference), band, stop_reasons,
                       [(t.rank, t.seed) for t in study.missing])


NO_RECORDS = "convergence unknown (the sweep kept no per-epoch records)"


def verdict(found: Convergence | None) -> str:
    """``converged (...)`` / ``not converged: train longer (...)``, or why it cannot be said."""
    return found.verdict() if found is not None else NO_RECORDS


def study_confirmation(study: Study, result: EffectiveRankResult) -> dict:
    """What a longer budget said about ``result`` (``effrank confirm``'s records in the study's run folder).

    Returns ``record``: the record of the largest factor computed from the study's present rows, band and
    reference (``None`` when there is none); ``stale``: the factors of records computed from other rows (the study
    was extended or a student trained again since), never shown as its confirmation; and ``describe``, in words.
    """
    rows = rows_digest(study.table, study.teacher_accuracy)
    current = {f: r for f, r in study.confirmations.items() if r.get("rows") == rows}
    matching = [f for f, r in current.items() if tuple(r["band"]) == tuple(result.band)
                and math.isclose(r["reference_accuracy"], result.reference)]
    record = current[max(matching)] if matching else None
    stale = sorted(set(study.confirmations) - set(current))
    if record is not None:
        describe = f"longer budget: {record['verdict']}"
    elif current:
        describe = "longer budget: checked for the study's own band and reference only"
    else:
        describe = f"longer budget: not checked (effrank confirm {study.run_dir})"
    if stale:
        describe += (f"; {', '.join(f'x{f}' for f in stale)} set aside, computed before the study's students "
                     "changed")
    return {"record": record, "stale": stale, "describe": describe}


MEASURE_LABELS = {"entropy_rank": "entropy effective rank", "stable_rank": "stable rank",
                  **{m: f"rank keeping {m.rsplit('_', 1)[1]}% of the energy" for m in MEASURES if "energy" in m}}


def zero_shot(study: Study, result: EffectiveRankResult) -> EffectiveRankResult | None:
    """Region and knee of the students *before* training (truncated SVD of the teacher), against the same
    reference accuracy as ``result``; None when the students were not SVD-initialized."""
    zero = study.table.get("zero_shot_accuracy")
    if study.config.init != "svd" or zero is None or zero.isna().any():
        return None
    return effective_rank(study.ranks, zero.to_numpy(float), result.reference,
                          result.band, n_bootstrap=0)


def training_free(study: Study, result: EffectiveRankResult) -> pd.DataFrame:
    """Three estimates side by side: what the weights alone say (median over the factorized maps of each
    spectral measure), what truncation alone says (the zero-shot SVD students' region and knee), and what
    distillation measures; ``vs distilled knee`` is each rank over the distilled knee."""
    rows = []
    if study.spectra is not None:
        per_map = study.spectra[0]
        medians = per_map[list(MEASURES)].median()
        rows += [{"estimate": f"weights: {MEASURE_LABELS[m]} (median of {len(per_map)} maps)",
                  "rank": float(medians[m])} for m in MEASURES]
    truncated = zero_shot(study, result)
    for name, fitted in (("truncation: SVD students before training", truncated), ("distillation", result)):
        if fitted is not None:
            rows.append({"estimate": name, "r_lo": fitted.low.describe(), "r_hi": fitted.high.describe(),
                         "knee": fitted.knee})
    table = pd.DataFrame(rows, columns=["estimate", "rank", "r_lo", "r_hi", "knee"])
    if result.knee is not None:
        table["vs distilled knee"] = table["rank"].fillna(table["knee"]) / result.knee
    return table


def training_free_record(study: Study, result: EffectiveRankResult) -> dict:
    """The training-free estimates for ``summary.json``: the spectral medians (model, per map kind, per block)
    and the zero-shot region and knee."""
    truncated = zero_shot(study, result)
    return {"spectral": summarize(study.spectra[0]) if study.spectra is not None else None,
            "zero_shot": truncated.to_dict() if truncated is not None else None}


def region_facts(study: Study, result: EffectiveRankResult) -> dict:
    """Region, knee and the parameter count / compression at both ends of the region (where crossed).

    ``knee`` is the rank rounded to 2 decimals, or ``None`` where undefined (``knee_status`` says why).
    """
    facts = {"region_low": result.low.describe(), "region_high": result.high.describe(),
             "knee": None if result.knee is None else round(result.knee, 2), "knee_status": result.knee_status,
             "reference": result.reference, "band": list(result.band)}
    for end, crossing in (("low", result.low), ("high", result.high)):
        if crossing.rank is not None:
            facts[f"params_at_{end}"] = round(study.params_at(crossing.rank))
            facts[f"compression_at_{end}"] = round(study.compression_at(crossing.rank), 2)
    return facts


def summary_text(study: Study, result: EffectiveRankResult, found: Convergence | None = None) -> str:
    """One paragraph for people: region, knee (or why it is undefined), what the region costs in parameters,
    with several seeds the bootstrap intervals (a censored one says in how many resamples its level was missed),
    whether the estimate has converged in the students' budget (``found``, when given) and what a longer budget
    said (:func:`study_confirmation`)."""
    f = region_facts(study, result)
    text = (f"Effective-rank region [{f['region_low']}, {f['region_high']}] for {result.band[0]:.0%}-"
            f"{result.band[1]:.0%} of reference accuracy {result.reference:.4f}; effective knee "
            f"{result.describe_knee()}.")
    for end in ("low", "high"):
        if f"params_at_{end}" in f:
            text += (f" At r_{end} = {getattr(result, 'region_' + end):.2f}: {f[f'params_at_{end}']:,} parameters "
                     f"({f[f'compression_at_{end}']:.2f}x compression).")
    if result.intervals:
        text += " 95% bootstrap over seeds: " + "; ".join(
            f"{QUANTITY_LABELS.get(name, name)} {interval.describe()}" for name, interval in result.intervals.items()
        ) + "."
    if len(study.failed):
        text += f" {len(study.failed)} failed student(s) excluded."
    if not study.complete:
        text += f" The study is {study.describe_missing()}: those ranks are left out of the fit."
    if found is not None:
        text += f" Budget: {found.verdict()}."
    confirmed = study_confirmation(study, result)["describe"]
    return f"{text} {confirmed[0].upper()}{confirmed[1:]}."


#: How the headline says "clearly outside the band", by the band stop's noise-margin rule.
MARGIN_WORDS = {
    MARGIN_RULE: f"or {MARGIN_RULE_WORDS}, if more",
    UNRECORDED_MARGIN: "with a noise margin the run folder does not record: made by an earlier effrank",
}


def band_stop_margin(study: Study) -> str | None:
    """The noise-margin rule the band stop stopped the study's students by (``MARGIN_RULE`` of
    :mod:`effrank_utils.estimate.noise`), ``UNRECORDED_MARGIN`` for a run folder made before effrank recorded it,
    None without a band stop."""
    return (study.band_margin or UNRECORDED_MARGIN) if study.config.band_stop else None


def summary(study: Study, result: EffectiveRankResult, reference: str | float,
            found: Convergence | None = None) -> dict:
    """The JSON-ready record of a study's result (``summary.json``).

    ``knee`` is ``None`` where undefined, with ``knee_status`` saying why. ``intervals`` (with several seeds) maps
    ``region_low``/``region_high``/``knee`` to ``low``, ``high``, ``reached`` (share of bootstrap resamples in which
    the level was reached / the knee defined), ``censored`` (``reached`` below 95%), ``resamples``, the shares
    missing by why, and ``describe``. ``confirmation`` is :func:`study_confirmation`'s. ``found`` is the study's
    :func:`study_convergence` when already computed.
    """
    fitted = result.to_dict()
    found = found if found is not None else study_convergence(study, result.band, reference)
    config = study.config
    return {
        "preset": config.preset,
        "estimator": {"init": config.init, "loss": config.loss, "student_epochs": config.student_epochs,
                      "student_patience": config.student_patience, "student_schedule": config.student_schedule,
                      "validation_fraction": config.validation_fraction, "targets": list(config.targets),
                      "band_stop": config.band_stop, "band_stop_margin": band_stop_margin(study)},
        "teacher_accuracy": study.teacher_accuracy,
        "reference": {"kind": reference if isinstance(reference, str) else "value", "accuracy": result.reference},
        "band": list(result.band),
        "region_low": fitted["region_low"],
        "region_high": fitted["region_high"],
        "knee": result.knee,                 # None where undefined
        "knee_status": result.knee_status,   # "defined" or "undefined: <why>"
        "intervals": fitted["intervals"],    # name -> {low, high, reached, censored, resamples, ..., describe}
        "facts": region_facts(study, result),
        "failed_students": len(study.failed),
        "complete": study.complete,
        "missing": [[t.rank, t.seed] for t in study.missing],  # (rank, seed) without a result: not yet, or failed
        "converged": found.converged if found is not None else (None if study.complete else False),
        "convergence": found.to_dict() if found is not None else None,
        "confirmation": study_confirmation(study, result),  # record (or None), stale factors, describe
        "coverage": read_json(study.run_dir / COVERAGE_JSON) if (study.run_dir / COVERAGE_JSON).exists() else None,
        "training_free": training_free_record(study, result),
        "table": study.table.replace({np.nan: None}).to_dict(orient="records"),
        "config": study.config.to_dict(),
        "preprocessing": study.preprocessing,
        "environment": study.environments[-1] if study.environments else None,  # the last run's; all of them:
        "environments": list(study.environments),                               # oldest first
    }


def write_summary(study: Study, result: EffectiveRankResult, reference: str | float,
                  found: Convergence | None = None) -> Path:
    """Write ``summary.json`` beside the sweep (atomically)."""
    return write_json(study.run_dir / SUMMARY_JSON, summary(study, result, reference, found))


def save_results(study: Study, result: EffectiveRankResult, reference: str | float,
                 found: Convergence | None = None) -> list[Path]:
    """The study's figures (PNG and SVG: the curve; region and knee against the budget and the teacher's
    spectra, when the sweep kept them) and ``summary.json``, written into its run folder; returns the paths."""
    figures = save_figure(plot_effective_rank(study, result), study.run_dir, "effective_rank")
    found = found if found is not None else study_convergence(study, result.band, reference)
    if found is not None:
        figures += save_figure(plot_convergence({study.config.init: found}), study.run_dir, "convergence")
    if study.spectra is not None:
        figures += save_figure(plot_spectra(*study.spectra), study.run_dir, "spectra")
    return [*figures, write_summary(study, result, reference, found)]


def sensitivity(study: Study, bands: Sequence[Sequence[float]] = (DEFAULT_BAND, (0.80, 0.90), (0.90, 0.97)),
                reference_offsets: Sequence[float] = (-0.01, 0.0, 0.01)) -> pd.DataFrame:
    """The region for a few bands and reference accuracies (teacher +/- offsets, and the best student)."""
    refs: dict[str, float | str] = {}
    for offset in reference_offsets:
        label = "teacher" if offset == 0 else f"teacher {offset * 100:+.0f} pt"
        refs[label] = study.teacher_accuracy + offset
    refs["best student"] = "best_student"
    return pd.DataFrame(sensitivity_table(study.ranks, study.accuracy, refs, bands))


def headline(run_dir: str | Path) -> str:
    """The study's result in one line, from its ``summary.json``."""
    summary = read_json(Path(run_dir) / SUMMARY_JSON)
    facts, estimator, reference = summary["facts"], summary["estimator"], summary["reference"]
    lo, hi = summary["band"]
    knee = f"knee {summary['knee']:.2f}" if summary["knee"] is not None else f"knee {summary['knee_status']}"
    censored = [i["describe"] for i in (summary["intervals"] or {}).values() if i["censored"]]
    found = summary.get("convergence")
    cuts = "learning rate cut at earlier plateaus, " if estimator.get("student_schedule") == "plateau" else ""
    budget = (f"up to {estimator['student_epochs']} epochs, {cuts}stopping at a validation plateau (patience "
              f"{estimator['student_patience']})" if estimator.get("student_patience")
              else f"{estimator['student_epochs']} epochs")
    if estimator.get("band_stop"):
        rule = estimator.get("band_stop_margin") or UNRECORDED_MARGIN  # summaries before the record name none
        margin = MARGIN_WORDS.get(rule, f"with the band stop's {rule!r} noise margin")
        budget += f", stopped once {estimator['band_stop']:g} ({margin}) outside the band"
        if summary["knee"] is not None:
            knee += " (of students stopped above the band: not their converged knee)"
    return (f"effective-rank region [{facts['region_low']}, {facts['region_high']}] ({lo:.0%}-{hi:.0%} of "
            f"{reference['kind']} accuracy {reference['accuracy']:.4f}), {knee}; "
            + (found["verdict"] if found else NO_RECORDS if summary.get("complete", True) else "incomplete")
            + (f"; {summary['confirmation']['describe']}" if summary.get("confirmation") else "")
            + f"; estimator: {estimator['init']} init, {estimator['loss']} loss, {budget}"
            + "".join(f"; {c}" for c in censored))
