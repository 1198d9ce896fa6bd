"""A study filed beside other experiments: one MLflow run per study (``effrank export RUN_DIR --mlflow [URI]``).

The run holds the fields that define the study (teacher, student) as parameters, every other field and the
estimator as tags, teacher accuracy, region, knee, convergence and completeness as metrics, accuracy against rank
as a metric series (the step is the rank), and ``summary.json``, ``sweep.csv`` and the figures as artifacts.
Exporting the same study again updates its run (found by the study's identity and run folder) instead of adding
one: parameters are the same by construction, tags and artifacts are replaced, and only metric points not yet
logged are added. Reading the run folder writes nothing there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..estimate.curves import EffectiveRankResult
from ..records.config import STUDY_FIELDS
from ..records.run_folder import FIGURE_DIR, SUMMARY_JSON, SWEEP_CSV, read_record
from .analysis import analyze, study_settings, summary
from .study import Study, load_study

DEFAULT_STORE = Path("mlruns")  # a local folder: an SQLite store and its artifacts
DEFAULT_EXPERIMENT = "effrank"
IDENTITY_TAG = "effrank.identity"
RUN_DIR_TAG = "effrank.run_dir"


def tracking_uri(given: str | None) -> str:
    """A URI MLflow accepts: ``given`` as is when it has a scheme (``sqlite:///x.db``, ``http://...``), else an
    SQLite store ``mlflow.db`` in a local folder (default ``mlruns/``; MLflow 3 no longer takes a bare folder)."""
    if given and "://" in given:
        return given
    folder = Path(given).expanduser() if given else DEFAULT_STORE
    return f"sqlite:///{(folder.resolve() / 'mlflow.db')}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an SQLite store's file (MLflow would use ``./mlruns`` of
    whatever folder it runs in); a server's own choice otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").resolve().as_uri()


def _value(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _metrics(study: Study, result: EffectiveRankResult, record: dict) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> (step, value) points: the study's numbers at step 0, accuracy against rank by rank."""
    single = {"teacher_accuracy": study.teacher_accuracy, "r_lo": result.region_low, "r_hi": result.region_high,
              "knee": result.knee, "converged": None if record["converged"] is None else float(record["converged"]),
              "complete": float(study.complete), "students": float(len(study.table))}
    points = {name: [(0, float(v))] for name, v in single.items() if v is not None and math.isfinite(v)}
    by_rank = study.table.groupby("rank")["final_accuracy"].mean()
    points["accuracy"] = [(int(r), float(a)) for r, a in by_rank.items()]
    points["normalized_accuracy"] = [(int(r), float(a) / result.reference) for r, a in by_rank.items()]
    return points


def export_mlflow(run_dir: str | Path, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """File the study of ``run_dir`` as one MLflow run in ``experiment`` at ``uri`` (see :func:`tracking_uri`);
    returns the run's id. A second export of the same study updates the same run."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    study = load_study(run_dir)
    band, reference = study_settings(study)
    result = analyze(study, band, reference)
    record = summary(study, result, reference)
    identity = read_record(study.run_dir)["identity"]
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(
        experiment, artifact_location=artifact_location(uri))
    folder = str(Path(study.run_dir).resolve())
    runs = client.search_runs([experiment_id], f"tags.`{IDENTITY_TAG}` = '{identity}'", max_results=1000)
    same = [r for r in runs if r.data.tags.get(RUN_DIR_TAG) == folder]
    run_id = same[0].info.run_id if same else client.create_run(experiment_id, run_name=Path(folder).name).info.run_id

    config = study.config.to_dict()
    params = [Param(name, _value(config[name])) for name in STUDY_FIELDS]
    tags = [RunTag(IDENTITY_TAG, identity), RunTag(RUN_DIR_TAG, folder),
            *(RunTag(f"config.{name}", _value(v)) for name, v in config.items() if name not in STUDY_FIELDS),
            *(RunTag(f"estimator.{name}", _value(v)) for name, v in record["estimator"].items()),
            RunTag("effrank.complete", _value(study.complete))]
    points = _metrics(study, result, record)
    latest = {name: {m.step: m.value for m in client.get_metric_history(run_id, name)} for name in points} \
        if same else {}
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for name, series in points.items() for step, value in series
               if latest.get(name, {}).get(step) != value]  # a second export adds only what changed
    client.log_batch(run_id, metrics=metrics, params=[] if same else params, tags=tags)
    client.log_dict(run_id, record, SUMMARY_JSON)
    client.log_artifact(run_id, str(study.run_dir / SWEEP_CSV))
    if (study.run_dir / FIGURE_DIR).is_dir():
        client.log_artifacts(run_id, str(study.run_dir / FIGURE_DIR), FIGURE_DIR)
    client.set_terminated(run_id)
    return run_id
