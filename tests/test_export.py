"""MLflow export against a real local store (SQLite), read back with MlflowClient: one run per study, updated in
place by a second export."""

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from effrank_utils.cli import main  # noqa: E402
from effrank_utils.records.config import STUDY_FIELDS  # noqa: E402
from effrank_utils.records.run_folder import read_sweep  # noqa: E402
from effrank_utils.report.analysis import analyze  # noqa: E402
from effrank_utils.report.export import IDENTITY_TAG, export_mlflow, tracking_uri  # noqa: E402
from effrank_utils.report.study import load_study  # noqa: E402
from effrank_utils.run.entry import load_preset  # noqa: E402
from effrank_utils.run.sweep import run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run_sweep(load_preset("smoke", ranks=[1, 2, 4], tensorboard=False), run_dir)
    return run_dir


def test_one_run_per_study_with_params_metrics_series_tags_and_artifacts(finished, tmp_path, capsys, snapshot):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = snapshot(finished)
    assert main(["export", str(finished), "--mlflow", uri]) == 0
    assert "exported" in capsys.readouterr().out
    assert snapshot(finished) == before  # reading the run folder writes nothing there
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("effrank").experiment_id])
    study = load_study(finished)
    result = analyze(study, study.config.band, study.config.reference)
    assert set(run.data.params) == set(STUDY_FIELDS) and run.data.params["loss"] == '"kd"'
    assert run.data.metrics["teacher_accuracy"] == pytest.approx(study.teacher_accuracy)
    if result.region_low is not None:
        assert run.data.metrics["r_lo"] == pytest.approx(result.region_low)
    assert run.data.metrics["complete"] == 1.0
    series = client.get_metric_history(run.info.run_id, "accuracy")
    table = read_sweep(finished)
    got = sorted((m.step, m.value) for m in series)
    assert [step for step, _ in got] == table["rank"].tolist()
    assert [value for _, value in got] == pytest.approx(table["final_accuracy"].tolist())
    assert run.data.tags["estimator.init"] == '"svd"' and run.data.tags["config.ranks"] == "[1, 2, 4]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "sweep.csv"} <= artifacts
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["teacher_accuracy"] == pytest.approx(study.teacher_accuracy)


def test_exporting_twice_updates_the_same_run(finished, tmp_path):
    uri = f"sqlite:///{tmp_path / 'twice.db'}"
    first = export_mlflow(finished, uri)
    second = export_mlflow(finished, uri)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("effrank").experiment_id])
    assert first == second and len(runs) == 1
    assert runs[0].data.tags[IDENTITY_TAG]
    assert len(client.get_metric_history(first, "accuracy")) == 3  # no point logged twice
    assert len(client.get_metric_history(first, "teacher_accuracy")) == 1


def test_a_local_folder_is_the_default_store_and_keeps_the_artifacts(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    assert tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert main(["export", str(finished), "--mlflow"]) == 0
    client = MlflowClient(tracking_uri=tracking_uri(None))
    (run,) = client.search_runs([client.get_experiment_by_name("effrank").experiment_id])
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns" / "mlflow-artifacts").resolve().as_uri())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns"]  # nothing elsewhere in the working folder
