"""The rank sweep: rows, resume after an interruption, refusal of a different config on the same run."""

import json

import pandas as pd
import pytest

from effrank_utils.records import run_folder
from effrank_utils.report.study import load_study
from effrank_utils.run import students, sweep
from effrank_utils.run.entry import load_preset


@pytest.fixture
def smoke():
    return load_preset("smoke", ranks=[1, 2, 4])


def test_sweep_writes_one_row_per_task(smoke, tmp_path):
    table = sweep.run_sweep(smoke.replace(seeds=[0, 1]), tmp_path)
    assert list(zip(table["rank"], table["seed"])) == [(1, 0), (1, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    assert set(run_folder.COLUMNS) <= set(table.columns)
    assert (table["status"] == "ok").all()
    assert table["final_accuracy"].between(0, 1).all() and (table["compression"] > 1).all()
    assert (table["init"] == "svd").all() and (table["loss"] == "kd").all()
    assert (tmp_path / "config.json").exists() and (tmp_path / "teacher.pt").exists()
    coverage = json.loads((tmp_path / "coverage.json").read_text())  # which maps the students factorize
    assert coverage == [{"block": "blocks.0", "factorized": ["blocks.0.attn.qkv", "blocks.0.attn.proj",
                                                              "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"],
                         "dense": [], "missing": []}]
    from effrank_utils.report import analysis
    study = load_study(tmp_path)
    assert analysis.summary(study, analysis.analyze(study), "teacher")["coverage"] == coverage


def test_interrupted_sweep_resumes_without_redoing_tasks(smoke, tmp_path, monkeypatch):
    real = students.train_students
    calls = []

    def second_task_crashes(config, teacher, data, tasks, **kwargs):
        calls.append([t.rank for t in tasks])
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second task")
        return real(config, teacher, data, tasks, **kwargs)

    monkeypatch.setattr(students, "train_students", second_task_crashes)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sweep.run_sweep(smoke, tmp_path)
    assert pd.read_csv(tmp_path / "sweep.csv")["rank"].tolist() == [1]
    table = sweep.run_sweep(smoke, tmp_path)
    assert calls == [[1], [2], [2], [4]]  # rank 1 was not trained again
    assert table["rank"].tolist() == [1, 2, 4]
    assert pd.read_csv(tmp_path / "sweep.csv")["rank"].tolist() == [1, 2, 4]


def test_extending_a_sweep_adds_only_new_ranks(smoke, tmp_path):
    sweep.run_sweep(smoke, tmp_path)
    first = pd.read_csv(tmp_path / "sweep.csv")
    table = sweep.run_sweep(smoke.replace(ranks=[1, 2, 3, 4]), tmp_path)
    assert table["rank"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(table[table["rank"] != 3].reset_index(drop=True), first)


def test_changed_config_on_the_same_run_is_refused(smoke, tmp_path):
    sweep.run_sweep(smoke, tmp_path)
    with pytest.raises(ValueError, match=r"run_dir: .* different config \(loss: saved 'kd', now 'logits'\)"):
        sweep.run_sweep(smoke.replace(loss="logits"), tmp_path)
    with pytest.raises(ValueError, match=r"teacher_epochs: saved 3, now 4"):
        sweep.run_sweep(smoke.replace(teacher_epochs=4), tmp_path)


def test_ranks_above_the_layer_dimension_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"ranks: \[500, 800\] exceed .* allowed: 1\.\.192"):
        load_preset("smoke", model="vit_tiny_patch16_224", image_size=16, patch_size=4, ranks=[2, 500, 800])
    cfg = load_preset("smoke", ranks=[1, 2])
    with pytest.raises(ValueError, match=r"ranks: 32 exceeds the layer dimension; allowed: 1\.\.16"):
        sweep.run_sweep(cfg, tmp_path, ranks=[1, 32])  # extra ranks are checked like the config's
    assert not (tmp_path / "sweep.csv").exists() and not (tmp_path / "teacher.pt").exists()
