"""Kill safety, concurrent writers, numerical faults, determinism and safe loading."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from effrank_utils.base.storage import load_checkpoint
from effrank_utils.lowrank.factorize import LowRankLinear
from effrank_utils.report.study import load_study
from effrank_utils.run import sweep
from effrank_utils.run.entry import load_preset
from effrank_utils.training.distill import DistillationLoss

PACKAGE = Path(__file__).resolve().parents[1] / "effrank_utils"
SETTINGS = ["--preset", "smoke", "--set", "ranks=[1,2,4]", "--set", "student_epochs=3", "--set", "teacher_epochs=3"]
COMPARED = ["rank", "seed", "status", "params", "final_accuracy", "best_accuracy", "best_epoch",
            "zero_shot_accuracy", "epochs"]


def sweep_process(run_dir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effrank_utils", "sweep", "--run-dir", str(run_dir), *SETTINGS],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_to_end(run_dir: Path) -> str:
    proc = sweep_process(run_dir)
    out, err = proc.communicate(timeout=1800)  # a guard against a hang, not a speed test
    assert proc.returncode == 0, err[-3000:]
    return err


def compared(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "sweep.csv")[COMPARED]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("reference")
    run_to_end(run_dir)
    return compared(run_dir)


def test_identical_runs_give_identical_tables(reference, tmp_path):
    run_to_end(tmp_path)
    pd.testing.assert_frame_equal(compared(tmp_path), reference)
    assert (tmp_path / "sweep.csv").read_text().count("\n") == len(reference) + 1


@pytest.mark.parametrize("pause_at", [
    "epoch_done:teacher:2",               # during teacher training (after its epoch-2 checkpoint)
    "epoch_done:rank 2 seed 0:2",         # during a student's training
    "atomic_write:state_r00002_s0.pt",    # while a student checkpoint is being written
    "atomic_write:r00002_s0.json",        # while a finished row is being written
    "atomic_write:sweep.csv",             # while the table is being rewritten
    "between_tasks",                      # between two students
])
def test_sigkill_then_resume_gives_the_uninterrupted_table(reference, tmp_path, pause_at):
    run_dir = tmp_path / "run"
    proc = sweep_process(run_dir, {"EFFRANK_PAUSE_AT": pause_at, "EFFRANK_PAUSE_DIR": str(tmp_path)})
    while not list(tmp_path.glob("*.paused")):  # no deadline: the process either pauses there or exits
        assert proc.poll() is None, "the fault point was never reached: " + proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run_dir / "sweep.csv").exists():  # whatever was there when killed is a complete, valid table
        partial = pd.read_csv(run_dir / "sweep.csv")
        assert partial["rank"].is_unique and (partial["status"] == "ok").all()
    err = run_to_end(run_dir)
    pd.testing.assert_frame_equal(compared(run_dir), reference)
    if pause_at.startswith("epoch_done:rank"):
        assert "resuming state_r00002_s0.pt at epoch 2" in err  # not from epoch 0
    if pause_at == "epoch_done:teacher:2":
        assert "resuming teacher.state.pt at epoch 2" in err
    assert not list((run_dir / "tasks").glob("state_*.pt"))


def test_two_concurrent_sweeps_share_the_work(reference, tmp_path):
    first, second = sweep_process(tmp_path), sweep_process(tmp_path)
    logs = [p.communicate(timeout=1800)[1] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    pd.testing.assert_frame_equal(compared(tmp_path), reference)
    for task in ("r00001_s0", "r00002_s0", "r00004_s0"):
        started = sum(len(re.findall(rf"training [^\n]*{task}", log)) for log in logs)
        assert started == 1, f"{task} trained {started} times"
    assert sum(log.count("INFO effrank_utils.run.teacher: teacher: test accuracy") for log in logs) == 1


@pytest.fixture
def nan_at_rank_2(monkeypatch):
    """The rank-2 student's loss turns NaN."""
    real = DistillationLoss.student_loss

    def nan_for_rank_2(self, student, batch, t_logits, t_feats):
        loss = real(self, student, batch, t_logits, t_feats)
        ranks = {m.rank for m in student.modules() if isinstance(m, LowRankLinear)}
        return loss * float("nan") if ranks == {2} else loss

    monkeypatch.setattr(DistillationLoss, "student_loss", nan_for_rank_2)


def test_nan_loss_marks_the_student_failed_and_the_sweep_goes_on(tmp_path, nan_at_rank_2):
    cfg = load_preset("smoke", ranks=[1, 2, 4])
    table = sweep.run_sweep(cfg, tmp_path)
    assert table["rank"].tolist() == [1, 2, 4]
    failed = table.set_index("rank").loc[2]
    assert failed["status"] == "failed" and "non-finite loss" in failed["failure"]
    assert pd.isna(failed["final_accuracy"])
    assert (table.set_index("rank").loc[[1, 4], "status"] == "ok").all()
    study = load_study(tmp_path)
    assert len(study.failed) == 1 and study.table["rank"].tolist() == [1, 4]


def test_nan_in_a_fused_group_stops_only_that_student(tmp_path, nan_at_rank_2):
    table = sweep.run_sweep(load_preset("smoke", ranks=[1, 2, 4], fuse=3, student_epochs=2), tmp_path)
    assert table.set_index("rank")["status"].to_dict() == {1: "ok", 2: "failed", 4: "ok"}
    assert table.set_index("rank").loc[4, "epochs"] == 2


class _Executes:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_are_loaded_without_pickle_execution(tmp_path):
    for path in PACKAGE.glob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: {call}"
    torch.save({"x": _Executes()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights.only"):
        load_checkpoint(tmp_path / "evil.pt")
