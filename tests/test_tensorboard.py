"""Live curves: the event files TensorBoard reads hold exactly the per-epoch records, also after a kill and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from effrank_utils.records.run_folder import read_epochs, read_sweep  # noqa: E402
from effrank_utils.run.entry import load_preset  # noqa: E402
from effrank_utils.run.sweep import run_sweep  # noqa: E402
from effrank_utils.run.tensorboard import curve_folder  # noqa: E402

SETTINGS = ["--preset", "smoke", "--set", "ranks=[1,2,4]", "--set", "student_epochs=4", "--set", "teacher_epochs=3",
            "--set", "tensorboard=true"]


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_curves_match_the_records(run_dir: Path) -> None:
    epochs = read_epochs(run_dir)
    for (rank, seed), records in epochs.groupby(["rank", "seed"]):
        folder = run_dir / "tensorboard" / f"rank-{rank}_seed-{seed}"
        for tag in ("test_accuracy", "loss", "lr"):
            got = scalars(folder, tag)
            assert [step for step, _ in got] == records["epoch"].tolist(), (folder, tag)
            assert [value for _, value in got] == pytest.approx(records[tag].tolist(), rel=1e-6)
    teacher = pd.read_csv(run_dir / "teacher_metrics.csv")
    got = scalars(run_dir / "tensorboard" / "teacher", "test_accuracy")
    assert [step for step, _ in got] == teacher["epoch"].tolist()
    assert [value for _, value in got] == pytest.approx(teacher["test_accuracy"].tolist(), rel=1e-6)
    table = read_sweep(run_dir)
    study = scalars(run_dir / "tensorboard" / "study", "accuracy_vs_rank")
    assert [step for step, _ in study] == sorted(table["rank"].unique().tolist())
    assert {"r_lo", "r_hi"} & set(EventAccumulator(str(run_dir / "tensorboard" / "study")).Reload().Tags()["scalars"])


def sweep_process(run_dir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effrank_utils", "sweep", "--run-dir", str(run_dir), *SETTINGS],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_curves_equal_epochs_csv(tmp_path):
    proc = sweep_process(tmp_path / "run")
    _, err = proc.communicate(timeout=1800)  # a hang guard, not a speed test
    assert proc.returncode == 0, err[-3000:]
    assert_curves_match_the_records(tmp_path / "run")


def test_a_killed_and_resumed_sweep_continues_its_curves_without_duplicated_steps(tmp_path):
    run_dir = tmp_path / "run"
    # killed after epoch 2's checkpoint, before its curves were written
    proc = sweep_process(run_dir, {"EFFRANK_PAUSE_AT": "epoch_done:rank 2 seed 0:2",
                                   "EFFRANK_PAUSE_DIR": str(tmp_path)})
    while not list(tmp_path.glob("*.paused")):  # no deadline: the process either pauses there or exits
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [s for s, _ in scalars(curve_folder(run_dir, _task(2)), "test_accuracy")] == [1]
    again = sweep_process(run_dir)
    _, err = again.communicate(timeout=1800)
    assert again.returncode == 0 and "resuming state_r00002_s0.pt at epoch 2" in err, err[-3000:]
    assert_curves_match_the_records(run_dir)


def test_off_writes_no_curves(tmp_path):
    run_sweep(load_preset("smoke", ranks=[1, 2], tensorboard=False), tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def _task(rank: int):
    from effrank_utils.records.run_folder import Task
    return Task(rank, 0)
