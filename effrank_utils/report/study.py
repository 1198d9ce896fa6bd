"""The read model: what a run folder holds, read once -- its config, the teacher's accuracy, the students' rows and
per-epoch records, the teacher's spectra, and which students the study still lacks. Reading never writes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..base.storage import read_json
from ..estimate.convergence import describe_missing
from ..records.config import StudyConfig, config_from_json
from ..records.run_folder import (
    EPOCH_COLUMNS,
    TEACHER_JSON,
    Task,
    missing_tasks,
    read_confirmations,
    read_epochs,
    read_record,
    read_spectra,
    read_sweep,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    """What a run directory holds: its config, the teacher's accuracy and the sweep table."""

    run_dir: Path
    config: StudyConfig
    teacher_accuracy: float
    table: pd.DataFrame   # rows that finished successfully
    failed: pd.DataFrame  # rows whose training failed (excluded from every fit)
    epochs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(EPOCH_COLUMNS)))
    # per-epoch records of the successful rows (empty for sweeps made without them)
    spectra: tuple[pd.DataFrame, dict] | None = None  # the teacher's per-map table and singular values, if saved
    missing: tuple[Task, ...] = ()  # students the study asks for without a successful row (not yet, or failed)
    environments: tuple[dict, ...] = ()  # what computed into it (versions, threads, device, commit), oldest first
    preprocessing: dict | None = None  # what made the model input (statistics, interpolation, resize, crop)
    confirmations: dict[int, dict] = field(default_factory=dict)  # effrank confirm's records, by factor
    band_margin: str | None = None  # the band stop's noise-margin rule, as config.json records it (if it does)

    @property
    def complete(self) -> bool:
        """Whether every student the study asks for has finished successfully."""
        return not self.missing

    def describe_missing(self) -> str:
        """``incomplete: 2 of 8 students have no result (rank 4 seed 0, ...)``; empty when complete."""
        if self.complete:
            return ""
        asked = len(self.table) + len(self.missing)
        return (f"incomplete: {len(self.missing)} of {asked} students have no result "
                f"({describe_missing([(t.rank, t.seed) for t in self.missing])})")

    @property
    def ranks(self) -> np.ndarray:
        return self.table["rank"].to_numpy(dtype=float)

    @property
    def accuracy(self) -> np.ndarray:
        return self.table["final_accuracy"].to_numpy(dtype=float)

    def params_at(self, rank: float) -> float:
        """Student parameters at a (fractional) rank: the count is linear in the rank."""
        per_rank = self.table.groupby("rank")["params"].first()
        return float(np.interp(rank, per_rank.index.to_numpy(float), per_rank.to_numpy(float)))

    def compression_at(self, rank: float) -> float:
        return float(self.table["teacher_params"].iloc[0]) / self.params_at(rank)


def load_study(run_dir: str | Path) -> Study:
    """Read a run directory; failed rows are separated out and counted (and logged)."""
    run_dir = Path(run_dir)
    if not (run_dir / TEACHER_JSON).exists():
        raise FileNotFoundError(f"run_dir: {run_dir} has no teacher yet; run the teacher notebook first")
    teacher = read_json(run_dir / TEACHER_JSON)
    if teacher.get("status") != "done":
        raise FileNotFoundError(f"run_dir: the teacher in {run_dir} has not finished training")
    table = read_sweep(run_dir)
    ok, failed = table[table["status"] == "ok"], table[table["status"] != "ok"]
    if len(failed):
        log.warning("%d failed student(s) excluded from the analysis: ranks %s", len(failed),
                    failed["rank"].tolist())
    if ok["rank"].nunique() < 2:
        raise ValueError(f"run_dir: {run_dir} has {ok['rank'].nunique()} finished rank(s); at least 2 are "
                         "needed for a curve (run the sweep)")
    epochs = read_epochs(run_dir)
    epochs = epochs.merge(ok[["rank", "seed"]], on=["rank", "seed"])  # rows that later failed or were redone
    record = read_record(run_dir)
    config = config_from_json(record["config"])
    return Study(run_dir, config, float(teacher["accuracy"]), ok.reset_index(drop=True),
                 failed.reset_index(drop=True), epochs, read_spectra(run_dir),
                 tuple(missing_tasks(run_dir, config, table)), tuple(record.get("environments", ())),
                 record.get("preprocessing"), read_confirmations(run_dir), record.get("band_margin"))


def load_finished_study(run_dir: str | Path) -> Study:
    """:func:`load_study` of a study whose every student has finished; an incomplete one is refused, naming
    what it lacks."""
    study = load_study(run_dir)
    if not study.complete:
        raise ValueError(f"run_dir: {run_dir} is not a finished study ({study.describe_missing()}); rerun its "
                         "sweep to finish it, or analyze it alone with effrank analyze")
    return study
