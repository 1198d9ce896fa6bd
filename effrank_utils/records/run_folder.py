"""The run folder: its layout, the identity of the study it holds, its task rows and ``sweep.csv``.

Layout::

    config.json            written by effrank: the study's config, data fingerprint, identity, band-stop rule
    teacher.pt             teacher weights + the config and data fingerprint that made them
    teacher.json           teacher status and accuracy (for people); teacher_metrics.csv: per-epoch metrics
    teacher.state.pt       resumable checkpoint while the teacher trains; teacher.lock: held while it trains
    tasks/<task>.json      one finished task's row (the source of truth), stamped with the study identity
    tasks/<task>.lock      held while a process trains that task
    tasks/state_*.pt       resumable checkpoint of a group of students being trained
    teacher_cache/         fp16 teacher logits per epoch (``cache_teacher``)
    tensorboard/           per-epoch curves of the teacher and each student, and the study's curve (``tensorboard``)
    sweep.csv              all finished rows, sorted by (rank, seed), rebuilt atomically after every task
    epochs.csv             every student's per-epoch loss, validation (and band-stop) and test accuracy (with sweep.csv)
    coverage.json          per block: which linear maps the students factorize and which stay dense
    spectra.csv            per factorized map of the teacher: training-free rank measures of its singular values
    spectra.json           those singular values (by map) and the measures' medians per map kind, block, model
    summary.json           the analysis; figures/: PNG and SVG; notebooks/: executed notebooks
    confirm/x<F>/          ``effrank confirm``: the deciding students under F times the budget (a run folder)
    confirm/x<F>.json      and how far r_lo, r_hi and the knee moved with them, for the rows it read (their digest)

A study's *identity* is a digest of the fields that define the teacher and the students plus a fingerprint of
the data's content. A folder, a teacher checkpoint or a row made under another identity is never counted as
this study's: it is refused with a message naming what differs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..base.storage import (
    CORRUPT_SUFFIX,
    CorruptFile,
    ensure_writable_dir,
    file_digest,
    file_lock,
    load_checkpoint,
    quarantine,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_text,
)
from ..estimate.noise import MARGIN_RULE, MARGIN_RULE_WORDS, UNRECORDED_MARGIN
from ..version import __version__
from .config import STUDY_FIELDS, TEACHER_FIELDS, StudyConfig, config_from_json, diff

log = logging.getLogger(__name__)

DEFAULT_RESULTS = Path("results")
CONFIG_JSON = "config.json"
SWEEP_CSV = "sweep.csv"
EPOCHS_CSV = "epochs.csv"
SUMMARY_JSON = "summary.json"
COVERAGE_JSON = "coverage.json"
SPECTRA_CSV = "spectra.csv"
SPECTRA_JSON = "spectra.json"
RUN_LOCK = "run.lock"
TASK_DIR = "tasks"
TEACHER_FILE = "teacher.pt"
TEACHER_JSON = "teacher.json"
TEACHER_STATE_FILE = "teacher.state.pt"
TEACHER_METRICS_CSV = "teacher_metrics.csv"
TEACHER_LOCK = "teacher.lock"
TEACHER_CACHE_DIR = "teacher_cache"
FIGURE_DIR = "figures"
NOTEBOOK_DIR = "notebooks"
TENSORBOARD_DIR = "tensorboard"
CONFIRM_DIR = "confirm"
RUN_FOLDER_DIRS = frozenset({TASK_DIR, TEACHER_CACHE_DIR, FIGURE_DIR, NOTEBOOK_DIR, TENSORBOARD_DIR, CONFIRM_DIR})
RUN_FOLDER_FILES = frozenset({CONFIG_JSON, SWEEP_CSV, EPOCHS_CSV, SUMMARY_JSON, COVERAGE_JSON, SPECTRA_CSV,
                              SPECTRA_JSON, RUN_LOCK, TEACHER_FILE, TEACHER_JSON, TEACHER_STATE_FILE,
                              TEACHER_METRICS_CSV, TEACHER_LOCK})
RUN_FOLDER_NAMES = RUN_FOLDER_DIRS | RUN_FOLDER_FILES
WRITTEN_BY = "effrank"
WORKER_FAILURE = "worker failed"
COLUMNS = ("rank", "seed", "status", "params", "teacher_params", "compression", "final_accuracy",
           "best_accuracy", "best_epoch", "zero_shot_accuracy", "epochs", "stop_reason", "val_accuracy", "init",
           "loss", "seconds", "failure")
#: A student's epochs, in its row: ``val_discordant`` (the share of validation images it and the teacher disagree
#: on being right) is what the band stop judged it by, and absent from students trained without it.
EPOCH_FIELDS = ("epoch", "lr", "loss", "val_accuracy", "val_discordant", "test_accuracy")
EPOCH_COLUMNS = ("rank", "seed", *EPOCH_FIELDS)  # of epochs.csv
TASK_FILE = re.compile(r"r(\d+)_s(\d+)\.json")
CONFIRM_RECORD = re.compile(r"x(\d+)\.json")  # confirm/x<F>.json


@dataclass(frozen=True, order=True)
class Task:
    """One student: a rank and a seed."""

    rank: int
    seed: int

    @property
    def name(self) -> str:
        return f"r{self.rank:05d}_s{self.seed}"


def default_run_dir(preset: str, results: str | Path = DEFAULT_RESULTS) -> Path:
    """``<results>/<preset>``; ``preset`` must be a plain name (it is a validated preset name)."""
    if not preset or preset in (".", "..") or Path(preset).name != preset:
        raise ValueError(f"preset: {preset!r} cannot name a run folder")
    return Path(results) / preset


def confirm_paths(run_dir: str | Path, factor: int) -> tuple[Path, Path]:
    """Where ``effrank confirm --factor F`` keeps its run folder of the longer budget, and its record."""
    return Path(run_dir) / CONFIRM_DIR / f"x{factor}", Path(run_dir) / CONFIRM_DIR / f"x{factor}.json"


def read_confirmations(run_dir: str | Path) -> dict[int, dict]:
    """The records ``effrank confirm`` left in ``run_dir``, by factor (empty when it never ran there)."""
    folder = Path(run_dir) / CONFIRM_DIR
    records = (CONFIRM_RECORD.fullmatch(path.name) for path in sorted(folder.glob("x*.json")))
    return {int(match[1]): read_json(folder / match[0], "delete it and run effrank confirm again")
            for match in records if match}


def rows_digest(rows: pd.DataFrame, teacher_accuracy: float) -> str:
    """A digest of what a study's curve is fitted from: the teacher's accuracy and each finished student's (rank,
    seed, final accuracy), in any order. It changes when a student is added, trained again or left out, so a record
    computed from the rows (a confirmation) can tell whether it still describes them."""
    ordered = rows.sort_values(["rank", "seed"])
    students = [[int(r), int(s), float(a)] for r, s, a in zip(ordered["rank"], ordered["seed"],
                                                               ordered["final_accuracy"])]
    return hashlib.sha256(json.dumps([float(teacher_accuracy), students]).encode()).hexdigest()[:20]


def check_folder_path(path: str | Path, field: str) -> None:
    """Refuse ``path`` as a folder when it, or the nearest part of it that exists, is a file (before anything is
    created there)."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{field}: {part} is a file, not a writable directory; give a folder")
            return


# ------------------------------------------------------------------------------------------------- identity
TEACHER_CHECKPOINT_MARK = "+teacher_checkpoint:"
FILE_FINGERPRINT_PREFIX = "files-"  # the fingerprint of streamed data: from its file list (data_loading="stream")


def inputs_fingerprint(config: StudyConfig, data: Any) -> str:
    """The content the study is computed from besides its config: the data's fingerprint and, for a teacher
    loaded from ``teacher_checkpoint``, the checkpoint file's content digest (so that moving the file changes
    nothing and changing its content is never mixed with earlier results)."""
    if config.teacher_checkpoint is None:
        return data.fingerprint()
    return f"{data.fingerprint()}{TEACHER_CHECKPOINT_MARK}{file_digest(config.teacher_checkpoint)}"


def study_identity(config: StudyConfig, data_fingerprint: str, names: tuple[str, ...] = STUDY_FIELDS) -> str:
    """A digest of the fields ``names`` of ``config`` and of the data's content fingerprint."""
    values = {n: list(v) if isinstance(v := getattr(config, n), tuple) else v for n in names}
    text = json.dumps({"fields": values, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def identity_of(config: StudyConfig, data: Any, names: tuple[str, ...] = STUDY_FIELDS) -> str:
    """:func:`study_identity` of ``config`` with the inputs ``data`` (and a loaded teacher) give it."""
    return study_identity(config, inputs_fingerprint(config, data), names)


def check_same_study(where: str, saved_config: dict, saved_fingerprint: str | None, config: StudyConfig,
                     data_fingerprint: str | None, names: tuple[str, ...] = STUDY_FIELDS) -> None:
    """Refuse ``where`` (a folder or file) if it was made with other values of ``names`` or other data (not
    compared when ``data_fingerprint`` is None)."""
    mismatch = diff(saved_config, config.to_dict(), names)
    if mismatch:
        details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatch.items())
        raise ValueError(f"{where} holds a study with a different config ({details}). Use a new run directory "
                         "(or --fresh) instead of mixing results.")
    if data_fingerprint is not None and saved_fingerprint != data_fingerprint:
        saved_teacher = (saved_fingerprint or "").partition(TEACHER_CHECKPOINT_MARK)[2] or None
        teacher = data_fingerprint.partition(TEACHER_CHECKPOINT_MARK)[2] or None
        if saved_teacher != teacher:
            raise ValueError(f"{where} was made with another teacher (teacher_checkpoint content "
                             f"{saved_teacher or 'none: trained by effrank'}, now {teacher or 'none'}). Use a new run "
                             "directory (or --fresh) instead of mixing results.")
        streamed = [(f or "").startswith(FILE_FINGERPRINT_PREFIX) for f in (saved_fingerprint, data_fingerprint)]
        if streamed[0] != streamed[1]:
            how = {True: "stream (fingerprinted from its files)", False: "memory (fingerprinted from its pixels)"}
            raise ValueError(f"data_loading: {where} was made with the data loaded by {how[streamed[0]]}, now by "
                             f"{how[streamed[1]]}; the two fingerprints cannot be compared: set data_loading to "
                             f"{'stream' if streamed[0] else 'memory'} as before, or use a new run directory")
        raise ValueError(f"{where} was made from different data (data fingerprint saved {saved_fingerprint}, now "
                         f"{data_fingerprint}; data_root {saved_config.get('data_root')!r} then, "
                         f"{config.data_root!r} now). Use a new run directory (or --fresh) instead of mixing "
                         "results.")


# ------------------------------------------------------------------------------------------------ the folder
def read_record(run_dir: str | Path) -> dict:
    """The content of ``config.json``; refuses a file that effrank did not write."""
    path = Path(run_dir) / CONFIG_JSON
    record = read_json(path, "delete the run folder's config.json only if you are sure the folder holds this "
                             "study, or use a new run directory")
    if not isinstance(record, dict) or record.get("written_by") != WRITTEN_BY or "config" not in record:
        raise CorruptFile(f"{path}: not a config.json written by this version of effrank; use a new run directory")
    return record


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` written by effrank."""
    try:
        read_record(path)
    except (OSError, ValueError):
        return False
    return True


def _teacher_record(run_dir: Path) -> dict | None:
    """The config and data fingerprint of the run folder's teacher (finished or in training), if it has one."""
    what_to_do = "delete teacher.json and teacher.pt to train the teacher again"
    if (run_dir / TEACHER_JSON).exists():
        record = read_json(run_dir / TEACHER_JSON, what_to_do)
        if not isinstance(record, dict):
            raise CorruptFile(f"{run_dir / TEACHER_JSON}: not a teacher record; {what_to_do}")
        return record
    if (run_dir / TEACHER_FILE).exists():
        payload = load_checkpoint(run_dir / TEACHER_FILE, what_to_do=what_to_do)
        return {"config": json.loads(payload.get("config", "{}")), "data_fingerprint": payload.get("data_fingerprint")}
    return None


def check_config(run_dir: str | Path, config: StudyConfig) -> None:
    """Refuse ``run_dir`` if it is a folder effrank did not make, or if it holds a study with other settings
    (the config's fields, and the band stop's margin rule of students it holds: cheap, before the data is
    loaded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    foreign = sorted(name for p in run_dir.iterdir() if not (name := p.name).startswith(".")
                     and name.split(CORRUPT_SUFFIX)[0] not in RUN_FOLDER_NAMES)
    if foreign:
        raise ValueError(f"run_dir: {run_dir} is not empty and not an effrank run folder (it holds {foreign[:3]}); "
                         "use a new or empty folder")
    misplaced = sorted([p for name in RUN_FOLDER_FILES if (p := run_dir / name).is_dir()]
                       + [p for name in RUN_FOLDER_DIRS if (p := run_dir / name).exists() and not p.is_dir()])
    if misplaced:
        kind = "folder" if misplaced[0].is_dir() else "file"
        raise ValueError(f"run_dir: {misplaced[0]} is a {kind}, where effrank keeps a "
                         f"{'file' if kind == 'folder' else 'folder'}; move it out of the run folder")
    if (run_dir / CONFIG_JSON).exists():
        record = read_record(run_dir)
        check_same_study(f"run_dir: {run_dir}", record["config"], None, config, None)
        if swept_tasks(run_dir) or tasks_in_training(run_dir):
            check_band_margin(run_dir, record, config)


def prepare_run(config: StudyConfig, run_dir: str | Path, data_fingerprint: str,
                environment: dict | None = None, preprocessing: dict | None = None) -> Path:
    """Check that ``run_dir`` is writable and either new (or empty) or made by the same study -- its
    ``config.json``, its teacher and its rows, all before anything is written --; clean up what an interrupted
    write left; save ``config.json`` (with the ``environment`` this run computes in and the ``preprocessing`` that
    makes its model input). Serialized between
    processes, so two studies never share a folder.

    Ranks, seeds, band, reference and execution settings may change between runs of one study (a sweep can be
    extended); the fields that define the teacher and the students, and the data, may not.
    """
    run_dir = ensure_writable_dir(run_dir)
    with file_lock(run_dir / RUN_LOCK):
        check_config(run_dir, config)
        if (run_dir / CONFIG_JSON).exists():
            check_same_study(f"run_dir: {run_dir}", read_record(run_dir)["config"],
                             read_record(run_dir).get("data_fingerprint"), config, data_fingerprint)
        teacher = _teacher_record(run_dir)
        if teacher is not None:
            check_same_study(f"run_dir: {run_dir} (its teacher)", teacher.get("config", {}),
                             teacher.get("data_fingerprint"), config, data_fingerprint, TEACHER_FIELDS)
        check_rows(run_dir, study_identity(config, data_fingerprint))
        remove_stale_temporaries(run_dir, RUN_FOLDER_NAMES)
        remove_stale_temporaries(run_dir / TASK_DIR)
        write_record(run_dir, config, data_fingerprint, environment, preprocessing)
    return run_dir


def band_margin(config: StudyConfig) -> str | None:
    """The noise-margin rule the band stop of a study of ``config`` stops students by (None: no band stop)."""
    return MARGIN_RULE if config.band_stop else None


def check_band_margin(run_dir: str | Path, record: dict, config: StudyConfig) -> None:
    """Refuse to train into, or to confirm, a band-stop study (``record``: its ``config.json``) whose students were
    stopped by another noise-margin rule than this effrank's."""
    used = record.get("band_margin")
    if config.band_stop and used != MARGIN_RULE:
        used = f"the {used!r}" if used else f"an earlier ({UNRECORDED_MARGIN})"
        raise ValueError(f"run_dir: the students in {run_dir} were stopped by {used} noise margin of the band stop; "
                         f"this effrank's is {MARGIN_RULE!r} (a student's margin: {MARGIN_RULE_WORDS}). "
                         "Train the study again in a new run directory (effrank sweep --fresh "
                         "replaces this one) instead of mixing results.")


def write_record(run_dir: str | Path, config: StudyConfig, data_fingerprint: str,
                 environment: dict | None = None, preprocessing: dict | None = None) -> Path:
    """Write ``config.json``: who wrote it, the config, the data fingerprint, the study identity, the band stop's
    noise-margin rule (:func:`band_margin`), and what it was
    computed with: ``environment`` (this run's library versions, threads, device and commit), every distinct
    environment that has computed into the folder (``environments``, oldest first) and the ``preprocessing`` of
    its model input (statistics, interpolation, resize and crop; kept from before when not given)."""
    path = Path(run_dir) / CONFIG_JSON
    before = read_record(run_dir) if path.exists() else {}
    seen = before.get("environments", [])
    if environment is not None and environment not in seen:
        seen = [*seen, environment]
    return write_json(path, {
        "written_by": WRITTEN_BY, "version": __version__, "identity": study_identity(config, data_fingerprint),
        "data_fingerprint": data_fingerprint, "config": config.to_dict(), "band_margin": band_margin(config),
        "preprocessing": preprocessing if preprocessing is not None else before.get("preprocessing"),
        "environment": environment if environment is not None else (seen[-1] if seen else None),
        "environments": seen})


def load_run_config(run_dir: str | Path) -> StudyConfig:
    """The config saved in a run directory."""
    return config_from_json(read_record(run_dir)["config"])


def remove_run_folder(run_dir: str | Path, results: str | Path, inputs: dict[str, str | None] | None = None) -> None:
    """Delete ``run_dir`` (``--fresh``) only if it is an effrank run folder inside ``results`` that holds none of
    the study's ``inputs`` (field name -> path: a teacher checkpoint, a data folder), which are never deleted."""
    run_dir, results = Path(run_dir).resolve(), Path(results).resolve()
    if not run_dir.exists():
        return
    for field, given in (inputs or {}).items():
        if given is not None and run_dir in (path := Path(given).expanduser().resolve(), *path.parents):
            raise ValueError(f"--fresh: {field} {given} lies inside the run folder {run_dir}, which --fresh would "
                             "delete; move it out of the run folder first (or drop --fresh)")
    if results not in run_dir.parents:
        raise ValueError(f"--fresh: {run_dir} is not inside the results folder {results}; refusing to delete it "
                         "(delete it yourself if you mean to)")
    if not is_run_folder(run_dir):
        raise ValueError(f"--fresh: {run_dir} is not an effrank run folder (it has no config.json written by "
                         "effrank); refusing to delete it")
    shutil.rmtree(run_dir)


# ---------------------------------------------------------------------------------------------------- rows
def task_path(run_dir: str | Path, task: Task) -> Path:
    return Path(run_dir) / TASK_DIR / f"{task.name}.json"


ROW_COUNTS = ("params", "teacher_params", "epochs")  # positive integers in a successful row
ROW_ACCURACIES = ("final_accuracy", "best_accuracy", "zero_shot_accuracy")  # accuracies it must have
STATUSES = ("ok", "failed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_accuracy(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


def _row_problem(row: Any, task: Task) -> str | None:
    """What is wrong with a task row, checked against its schema (None: nothing)."""
    if not isinstance(row, dict) or not {"rank", "seed", "status"} <= set(row):
        return "not a task row (it needs rank, seed and status)"
    if (row["rank"], row["seed"]) != (task.rank, task.seed) or not _is_int(row["rank"]) or not _is_int(row["seed"]):
        return f"it holds rank {row['rank']!r} seed {row['seed']!r} but its name says rank {task.rank} seed {task.seed}"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} is none of {', '.join(STATUSES)}"
    if row["status"] == "failed":
        return None if isinstance(row.get("failure"), str) else "a failed row without the reason it failed"
    for name in ROW_COUNTS:
        if not _is_int(row.get(name)) or row[name] < 1:
            return f"{name} {row.get(name)!r} is not a positive integer"
    for name in ROW_ACCURACIES:
        if not _is_accuracy(row.get(name)):
            return f"{name} {row.get(name)!r} is not an accuracy in [0, 1]"
    if row.get("val_accuracy") is not None and not _is_accuracy(row["val_accuracy"]):
        return f"val_accuracy {row['val_accuracy']!r} is not an accuracy in [0, 1]"
    history = row.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) and _is_int(h.get("epoch"))
                                                and _is_accuracy(h.get("test_accuracy")) for h in history):
        return "its history is not a list of epochs with a test accuracy in [0, 1]"
    return None


def read_row(run_dir: str | Path, task: Task) -> dict | None:
    """A task's row, or None if it has none. A damaged row, or one whose content disagrees with its file name,
    is moved aside (``*.corrupt``) with a warning, so that the task is trained again."""
    path = task_path(run_dir, task)
    if not path.exists():
        return None
    try:
        row = read_json(path)
        problem = _row_problem(row, task)
    except CorruptFile as exc:
        problem = str(exc)
    if problem is None:
        return row
    try:
        moved = quarantine(path)
    except FileNotFoundError:  # another process moved it aside first
        return None
    log.warning("%s: %s; moved aside to %s, the task will be trained again", path, problem, moved.name)
    return None


def write_row(run_dir: str | Path, task: Task, row: dict) -> Path:
    """Write a task's row (atomically)."""
    return write_json(task_path(run_dir, task), row)


def swept_tasks(run_dir: str | Path) -> list[Task]:
    """Every task that has a row file, sorted by (rank, seed)."""
    found = (TASK_FILE.fullmatch(p.name) for p in (Path(run_dir) / TASK_DIR).glob("r*_s*.json"))
    return sorted(Task(int(m[1]), int(m[2])) for m in found if m)


def check_row_identity(run_dir: str | Path, row: dict, identity: str) -> None:
    """Refuse a trained row made under another study identity (other settings or data)."""
    if row.get("status") == "failed" and str(row.get("failure") or "").startswith(WORKER_FAILURE):
        return  # a placeholder for a task whose worker died: it is trained again anyway
    if row.get("identity") != identity:
        path = task_path(run_dir, Task(row["rank"], row["seed"]))
        raise ValueError(f"run_dir: {path} was trained under other settings or data than this study (identity "
                         f"{row.get('identity')}, this study {identity}): a field that defines the teacher or "
                         "the students, or the data, changed. Use a new run directory (or --fresh) instead of "
                         "mixing results.")


def check_rows(run_dir: str | Path, identity: str) -> None:
    """Refuse a run folder holding rows of another study identity (before any compute)."""
    for task in swept_tasks(run_dir):
        row = read_row(run_dir, task)
        if row is not None:
            check_row_identity(run_dir, row, identity)


def finished_row(run_dir: str | Path, task: Task, identity: str) -> dict | None:
    """The task's row if it is finished under this identity (a row whose worker died does not count)."""
    row = read_row(run_dir, task)
    if row is None or str(row.get("failure") or "").startswith(WORKER_FAILURE):
        return None
    check_row_identity(run_dir, row, identity)
    return row


def finished_rows(run_dir: str | Path) -> list[dict]:
    """Rows of every task with a (readable) row, sorted by (rank, seed)."""
    rows = (read_row(run_dir, task) for task in swept_tasks(run_dir))
    return [row for row in rows if row is not None]


def _csv(fieldnames: tuple[str, ...], records: Any) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r.get(k) for k in fieldnames} for r in records)
    return out.getvalue()


def write_sweep_csv(run_dir: str | Path) -> Path:
    """Rebuild ``sweep.csv`` and ``epochs.csv`` from the task rows (atomic; serialized between processes)."""
    run_dir = Path(run_dir)
    with file_lock(run_dir / TASK_DIR / "sweep.lock"):
        rows = finished_rows(run_dir)
        epochs = ({"rank": row["rank"], "seed": row["seed"]} | h for row in rows if row["status"] == "ok"
                  for h in row.get("history") or ())
        write_text(run_dir / EPOCHS_CSV, _csv(EPOCH_COLUMNS, epochs))
        return write_text(run_dir / SWEEP_CSV, _csv(COLUMNS, rows))


def read_sweep(run_dir: str | Path) -> pd.DataFrame:
    """``sweep.csv`` as a DataFrame (empty with the right columns if nothing has finished)."""
    path = Path(run_dir) / SWEEP_CSV
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as exc:
        table, problem = None, str(exc)
    else:
        problem = _table_problem(table)
    if problem:
        raise CorruptFile(f"{path}: not a sweep table ({problem}); delete it: the next sweep rebuilds it from "
                          f"{TASK_DIR}/")
    return table


def _table_problem(table: pd.DataFrame) -> str | None:
    """What is wrong with a sweep table (None: nothing): its columns, and the accuracy of each successful row."""
    missing = [c for c in ("rank", "seed", "status", "final_accuracy") if c not in table.columns]
    if missing:
        return f"missing columns {missing}"
    ok = table[table["status"] == "ok"]
    accuracy = pd.to_numeric(ok["final_accuracy"], errors="coerce")
    bad = ok[~accuracy.between(0, 1)]
    if len(bad):
        row = bad.iloc[0]
        return f"rank {row['rank']} seed {row['seed']} has final_accuracy {row['final_accuracy']!r}, not in [0, 1]"
    return None


def read_epochs(run_dir: str | Path) -> pd.DataFrame:
    """``epochs.csv``: one line per (rank, seed, epoch) of the students that finished; empty when the folder has
    none (a sweep made before per-epoch records were kept)."""
    path = Path(run_dir) / EPOCHS_CSV
    columns = list(EPOCH_COLUMNS)
    if not path.exists():
        return pd.DataFrame(columns=columns)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: not a per-epoch table ({exc}); delete it: the next sweep rebuilds it from "
                          f"{TASK_DIR}/") from None
    return table.reindex(columns=columns)


STATE_FILE = re.compile(r"state_(.*)\.pt")


def tasks_in_training(run_dir: str | Path) -> list[Task]:
    """Tasks with a resumable checkpoint in the run folder: in training now, or stopped midway."""
    names = (m[1] for p in (Path(run_dir) / TASK_DIR).glob("state_*.pt") if (m := STATE_FILE.fullmatch(p.name)))
    return sorted(Task(int(t[1]), int(t[2])) for name in names for t in re.finditer(r"r(\d+)_s(\d+)", name))


def missing_tasks(run_dir: str | Path, config: StudyConfig, table: pd.DataFrame) -> list[Task]:
    """The students the study asks for that have no successful row in ``table`` (its sweep table): not trained
    yet, in training, or failed. Asked for: every rank of the config with every seed, every seed of a rank that
    has a row or a checkpoint (the ranks an adaptive sweep added)."""
    done = {Task(int(r), int(s)) for r, s, status in zip(table["rank"], table["seed"], table["status"])
            if status == "ok"}
    ranks = {*config.ranks, *map(int, table["rank"]), *(t.rank for t in tasks_in_training(run_dir))}
    return sorted(t for t in (Task(r, s) for r in ranks for s in config.seeds) if t not in done)


def failed_tasks(table: pd.DataFrame) -> list[str]:
    """One line per failed student of a sweep table: rank, seed and reason."""
    failed = table[table["status"] != "ok"]
    return [f"rank {r.rank} seed {r.seed}: {r.failure}" for r in failed.itertuples()]


def read_spectra(run_dir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """The per-map table and the singular values a sweep saved, or None for a folder without them."""
    run_dir = Path(run_dir)
    if not (run_dir / SPECTRA_CSV).exists() or not (run_dir / SPECTRA_JSON).exists():
        return None
    return pd.read_csv(run_dir / SPECTRA_CSV), read_json(run_dir / SPECTRA_JSON)["singular_values"]
