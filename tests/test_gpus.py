"""GPUs at scale: one GPU per process-pool worker, and torch.compile on CUDA only (runs on the CPU)."""

import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effrank_utils.run import executors
from effrank_utils.run.entry import load_preset
from effrank_utils.run.executors import gpu_for_worker, make_executor, pin_worker_gpu
from effrank_utils.training import loop
from effrank_utils.training.data import load_data, pipeline_for
from effrank_utils.training.loop import Recipe, compile_models, fit
from effrank_utils.training.models import build_model


# ------------------------------------------------------------------------------------------ a GPU per worker
def test_workers_take_the_visible_gpus_in_turn():
    assert [gpu_for_worker(i, ["0", "1"]) for i in range(4)] == ["0", "1", "0", "1"]
    assert gpu_for_worker(3, ["GPU-a1", "GPU-b2"]) == "GPU-b2"  # UUIDs are kept as written
    assert gpu_for_worker(0, []) is None


def test_visible_gpus_come_from_the_variable_else_from_torch(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert executors._visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors._visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert executors._visible_gpus() == ["0", "1"]


def test_each_initialized_worker_takes_the_next_gpu_and_none_leaves_the_process_alone(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored after the test
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    pin_worker_gpu(counter, [])
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and counter.value == 1
    seen = []
    for _ in range(3):
        pin_worker_gpu(counter, ["3", "5"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["5", "3", "5"]  # workers 1, 2, 3


def _meet_then_report(rendezvous: str, workers: int) -> tuple[int, str | None]:
    """A task that waits until ``workers`` worker processes have each started one (so that every worker runs
    one), then returns its process id and the GPU its process sees."""
    folder = Path(rendezvous)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(folder.iterdir())) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_process_workers_each_see_their_own_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two GPUs, as a scheduler would hand them out
    with make_executor("processes", 2) as pool:
        reports = dict(f.result() for f in [pool.submit(_meet_then_report, str(tmp_path), 2) for _ in range(2)])
    assert len(reports) == 2  # two worker processes
    assert sorted(reports.values()) == ["3", "5"]


# ------------------------------------------------------------------------------------------ torch.compile
class CrossEntropy:
    def shared(self, batch):
        return None

    def loss(self, model, batch, shared):
        return F.cross_entropy(model(batch.x), batch.y)


@pytest.fixture
def compile_calls(monkeypatch):
    """The modules ``nn.Module.compile`` is called on (it still compiles them, lazily)."""
    calls = []
    real = nn.Module.compile

    def compile(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "compile", compile)
    return calls


def _train(compile: bool) -> list[list[dict]]:
    config = load_preset("smoke")
    data = load_data("digits", train_subset=200)
    torch.manual_seed(0)
    model = build_model(config, data.num_classes, data.channels)
    recipe = Recipe(epochs=2, lr=1e-3, weight_decay=0.0, schedule="constant")
    results = fit([model], CrossEntropy(), pipeline_for(config, data, 64), recipe, seed=0, compile=compile)
    return [[{k: v for k, v in record.items() if k != "seconds"} for record in r.history] for r in results]


def test_compile_on_the_cpu_says_so_once_and_trains_as_without(caplog, compile_calls):
    plain = _train(compile=False)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        compiled = _train(compile=True)
    assert compiled == plain
    assert len(plain[0]) == 2
    assert compile_calls == []
    said = [r.getMessage() for r in caplog.records if "compile" in r.getMessage()]
    assert len(said) == 1 and "skipped on the CPU" in said[0]


def test_compile_on_cuda_compiles_each_model_in_place_and_keeps_its_keys(caplog, compile_calls):
    models = [nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)]
    keys = [list(m.state_dict()) for m in models]
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        compile_models(models, torch.device("cuda"))  # no GPU needed: nothing runs until a forward pass
    assert compile_calls == models
    assert [list(m.state_dict()) for m in models] == keys
    assert not caplog.records
