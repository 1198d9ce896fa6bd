"""Confirm a study's verdict: its deciding students trained again under a longer budget.

A run's own convergence check reads the histories its students left, and a student that a noisy validation plateau
stopped early holds still in it: on ``demo`` a patience of 8 calls itself converged while a patience of 12 still
moves r_hi by 0.58. :func:`confirm` trains only the students that decide r_lo, r_hi and the knee
(:func:`~effrank_utils.estimate.convergence.deciding_ranks`, every seed) again with ``factor`` times the patience
and the epoch cap, puts their accuracies in place of the shorter budget's and holds r_lo, r_hi and the knee to the
convergence tolerance. The other students keep theirs: they lie on one side of every level.

Layout, inside the study's run folder (the study's own files are only read)::

    confirm/x<factor>/       a run folder of the longer-budget study (the study's teacher, copied; its students)
    confirm/x<factor>.json   what moved: the budgets, the ranks retrained, before/after, movements, the verdict
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from ..base.storage import atomic_write, read_json, write_json
from ..estimate.convergence import deciding_ranks, describe_movements, movements
from ..estimate.curves import EffectiveRankResult, effective_rank
from ..records.config import StudyConfig
from ..records.run_folder import (
    SWEEP_CSV,
    TEACHER_FILE,
    TEACHER_JSON,
    check_band_margin,
    confirm_paths,
    load_run_config,
    missing_tasks,
    read_record,
    read_sweep,
    rows_digest,
)
from ..training.data import ImageData
from .sweep import run_sweep

log = logging.getLogger(__name__)


def check_factor(factor: int, field: str = "factor") -> None:
    """Refuse a budget multiple that is not an integer >= 2, naming ``field``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"{field}: the budget's multiple must be an integer >= 2, got {factor!r}")


def longer_budget(config: StudyConfig, factor: int) -> StudyConfig:
    """``config`` with ``factor`` times the students' epoch cap and patience (a patience of 0 stays 0)."""
    check_factor(factor)
    return config.replace(student_epochs=config.student_epochs * factor,
                          student_patience=config.student_patience * factor)


def _quantities(result: EffectiveRankResult) -> dict[str, float | None]:
    return {"region_low": result.region_low, "region_high": result.region_high, "knee": result.knee}


def _budget(config: StudyConfig) -> str:
    epochs = config.student_epochs
    return f"patience {config.student_patience}, at most {epochs} epoch{'' if epochs == 1 else 's'}"


def _fit(table: pd.DataFrame, config: StudyConfig, teacher_accuracy: float) -> EffectiveRankResult:
    return effective_rank(table["rank"], table["final_accuracy"], config.reference, config.band,
                          teacher_accuracy=teacher_accuracy, n_bootstrap=0)


def with_retrained(done: pd.DataFrame, retrained: pd.DataFrame, ranks: list[int], where: Path) -> pd.DataFrame:
    """The study's rows with those of ``ranks`` replaced by the longer budget's, seed for seed. Rows of other ranks
    in the longer-budget folder (deciders of an earlier state of the study) are left out; a student missing there
    (failed) is an error."""
    wanted = done[done["rank"].isin(ranks)][["rank", "seed"]]
    ok = retrained[retrained["status"] == "ok"]
    replacing = wanted.merge(ok, on=["rank", "seed"], how="left")
    if replacing["final_accuracy"].isna().any():
        failed = replacing[replacing["final_accuracy"].isna()].iloc[0]
        raise FloatingPointError(f"confirm: rank {failed['rank']} seed {failed['seed']} has no result under the "
                                 f"longer budget; see {where / SWEEP_CSV}")
    return pd.concat([done[~done["rank"].isin(ranks)], replacing], ignore_index=True)


def _copy_teacher(run_dir: Path, into: Path) -> None:
    """The study's finished teacher into the longer-budget run folder (the same weights: no retraining)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in (TEACHER_JSON, TEACHER_FILE):  # the record first: a folder with weights but no record is refused
        if not (into / name).exists():
            with open(run_dir / name, "rb") as source:
                atomic_write(into / name, lambda f, source=source: shutil.copyfileobj(source, f))


def confirm(run_dir: str | Path, factor: int = 2, data: ImageData | None = None) -> dict:
    """Train the deciding students of the finished study in ``run_dir`` under ``factor`` times its budget and
    say whether r_lo, r_hi and the knee stay within the convergence tolerance.

    Parameters
    ----------
    run_dir
        A run folder whose students have all finished (``effrank sweep`` or ``make reproduce``).
    factor
        The multiple of ``student_epochs`` and ``student_patience`` the deciding students train under (>= 2).
    data
        The study's data, if already loaded (else loaded from the config).

    Returns
    -------
    dict
        What ``confirm/x<factor>.json`` holds: ``rows`` (:func:`~effrank_utils.records.run_folder.rows_digest` of the
        study's rows it confirms), ``band`` and ``reference_accuracy`` (the study's own), ``budget`` (shorter and
        longer), ``ranks`` retrained, ``before`` and ``after`` (r_lo, r_hi, knee), ``movements`` (name -> distance,
        tolerance, settled), ``settled`` and ``verdict`` in words. Rerunning resumes the longer-budget students
        where they stopped.

    Notes
    -----
    Only the students bracketing a level or the knee are retrained, so a curve whose other students would still
    cross a level with more training is not seen; :func:`~effrank_utils.report.compare.budget_checks` on two full
    studies is the complete check.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    longer = longer_budget(config, factor)
    check_band_margin(run_dir, read_record(run_dir), config)
    table = read_sweep(run_dir)
    if missing := missing_tasks(run_dir, config, table):
        raise ValueError(f"run_dir: {run_dir} lacks {len(missing)} student(s) (e.g. rank {missing[0].rank} seed "
                         f"{missing[0].seed}); finish the study first (effrank sweep with the same settings)")
    done = table[table["status"] == "ok"]
    teacher = read_json(run_dir / TEACHER_JSON)["accuracy"]
    before = _fit(done, config, teacher)
    ranks = deciding_ranks(before)

    into, record_path = confirm_paths(run_dir, factor)
    _copy_teacher(run_dir, into)
    log.info("confirm: ranks %s again with %d epochs at most, patience %d, in %s", ranks, longer.student_epochs,
             longer.student_patience, into)
    retrained = run_sweep(longer.replace(ranks=tuple(ranks), sweep_mode="grid"), into, data=data)
    after = _fit(with_retrained(done, retrained, ranks, into), config, teacher)

    moved = movements(before, after)
    settled = all(m.settled for m in moved)
    record = {
        "factor": factor, "ranks": ranks, "seeds": list(config.seeds),
        "rows": rows_digest(done, teacher),  # the study's rows it confirms: analyze sets a stale record aside
        "band": list(before.band), "reference_accuracy": before.reference,
        "budget": {"shorter": _budget(config), "longer": _budget(longer)},
        "before": _quantities(before), "after": _quantities(after),
        "movements": {m.name: m.to_dict() for m in moved},
        "settled": settled,
        "verdict": (f"{'confirmed' if settled else 'not confirmed'}: ranks {', '.join(map(str, ranks))} trained "
                    f"again with {_budget(longer)} ({factor}x): {describe_movements(moved)}"
                    + ("" if settled else "; train longer")),
    }
    write_json(record_path, record)
    return record

