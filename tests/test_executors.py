"""Sweeps dispatched to Ray (a local 2-CPU cluster) and to a concurrent.futures executor."""

import concurrent.futures as cf
import functools
import multiprocessing
import os

import pandas as pd
import pytest
import torch

from effrank_utils.run import sweep
from effrank_utils.run.entry import load_preset
from effrank_utils.run.executors import RayExecutor

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install -e '.[ray]')")

COMPARED = ["rank", "seed", "status", "params", "final_accuracy", "best_accuracy", "zero_shot_accuracy", "epochs",
            "stop_reason"]


@pytest.fixture(scope="module")
def smoke():  # students stop at a validation plateau, as in the demo
    return load_preset("smoke", ranks=[1, 2, 4], seeds=[0, 1], student_epochs=3, validation_fraction=0.1,
                       student_patience=1, student_schedule="constant")


@pytest.fixture(scope="module")
def local_run(smoke, tmp_path_factory):
    """The local executor's table for a torch thread count (CPU results depend on it; a worker uses one
    thread per CPU it was given)."""

    @functools.cache
    def run(threads: int) -> pd.DataFrame:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return sweep.run_sweep(smoke, tmp_path_factory.mktemp("local"))[COMPARED]
        finally:
            torch.set_num_threads(before)

    return run


@pytest.fixture(scope="module")
def local_table(local_run):
    return local_run(1)  # a 1-CPU Ray task


@pytest.fixture
def fresh_ray():
    ray.shutdown()
    yield
    ray.shutdown()


def test_ray_sweep_equals_the_local_sweep(smoke, local_table, tmp_path, fresh_ray):
    table = sweep.run_sweep(smoke.replace(executor="ray", workers=2), tmp_path)
    pd.testing.assert_frame_equal(table[COMPARED], local_table)
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 6 + 1
    assert not ray.is_initialized()  # the Ray the sweep started is stopped cleanly with it, not at exit


def test_killed_ray_worker_is_retried_and_every_task_lands_once(smoke, local_table, tmp_path, monkeypatch,
                                                                 fresh_ray):
    monkeypatch.setenv("EFFRANK_CRASH_AT", "epoch_done:rank 2 seed 1:1")  # inherited by the Ray workers
    monkeypatch.setenv("EFFRANK_CRASH_ONCE", str(tmp_path / "crashed"))
    table = sweep.run_sweep(smoke.replace(executor="ray", workers=2), tmp_path / "run")
    assert (tmp_path / "crashed").exists(), "no worker was killed"
    assert list(zip(table["rank"], table["seed"])) == [(1, 0), (1, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    pd.testing.assert_frame_equal(table[COMPARED], local_table)


def test_task_that_exhausts_its_retries_is_recorded_failed_then_resumed(smoke, local_table, tmp_path, monkeypatch,
                                                                        fresh_ray):
    monkeypatch.setenv("EFFRANK_CRASH_AT", "epoch_done:rank 4 seed 0:1")
    monkeypatch.setenv("EFFRANK_CRASH_ONCE", str(tmp_path / "crashed"))
    executor = RayExecutor(num_cpus=2, max_retries=0)
    table = sweep.run_sweep(smoke, tmp_path / "run", executor=executor)
    failed = table[table["status"] == "failed"]
    assert list(zip(failed["rank"], failed["seed"])) == [(4, 0)]
    assert failed["failure"].iloc[0].startswith("worker failed")
    again = sweep.run_sweep(smoke, tmp_path / "run", executor=executor)  # a rerun trains it again
    pd.testing.assert_frame_equal(again[COMPARED], local_table)


def test_a_process_pool_executor_works_the_same(smoke, local_run, tmp_path):
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        table = sweep.run_sweep(smoke, tmp_path, executor=pool)
    pd.testing.assert_frame_equal(table[COMPARED], local_run(max(1, (os.cpu_count() or 1) // 2)))


def test_adaptive_refinement_runs_rounds_on_ray(smoke, tmp_path, fresh_ray):
    cfg = smoke.replace(ranks=[1, 16], seeds=[0], sweep_mode="adaptive", refine_rounds=2, reference=0.5,
                        band=(0.5, 0.9), executor="ray", workers=2)
    table = sweep.run_sweep(cfg, tmp_path)
    assert len(table) > 2 and table["rank"].is_unique


def test_ctrl_c_cancels_outstanding_tasks_and_a_rerun_resumes(smoke, tmp_path):
    def interrupt_after_first_row(table):
        raise KeyboardInterrupt

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(smoke, tmp_path, executor=pool, on_rows=interrupt_after_first_row)
        done = pd.read_csv(tmp_path / "sweep.csv")
        assert 1 <= len(done) < 6  # the queued groups were cancelled, not run
    table = sweep.run_sweep(smoke, tmp_path)
    assert len(table) == 6 and table["status"].eq("ok").all()
    merged = done.merge(table, on=["rank", "seed"], suffixes=("_before", "_after"))
    assert len(merged) == len(done)
    assert (merged["final_accuracy_before"] == merged["final_accuracy_after"]).all()


class _DeadWorkers(cf.Executor):
    """Every task's worker dies: what a broken pool or a lost cluster gives back."""

    def submit(self, fn, /, *args, **kwargs):
        future = cf.Future()
        future.set_exception(cf.process.BrokenProcessPool("a worker was terminated abruptly"))
        return future


def test_adaptive_sweep_whose_students_all_failed_stops_refining_and_keeps_the_failures(smoke, tmp_path, caplog):
    cfg = smoke.replace(ranks=[1, 16], seeds=[0], sweep_mode="adaptive", refine_rounds=2)
    table = sweep.run_sweep(cfg, tmp_path, executor=_DeadWorkers())
    assert table["status"].eq("failed").all() and sorted(table["rank"]) == [1, 16]
    assert "refinement stopped: 0 rank(s) trained successfully" in caplog.text
