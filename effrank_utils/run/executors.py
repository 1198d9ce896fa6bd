"""Run a sweep's student groups elsewhere: on Ray (local or a cluster) or on any ``concurrent.futures.Executor``
(a ``ProcessPoolExecutor``, Dask's ``Client.get_executor()``, a submitit SLURM executor, ...).

A worker runs :func:`train_group`: it reads the config, the data and the teacher by path and writes each finished
row into the run directory itself, with the same locks and atomic writes as a local run. So the run directory
is the same whatever ran it, a task that a dead worker left behind is simply run again (by a Ray retry or a
rerun), and no row is ever written twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import logging
import multiprocessing
import os
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..records.config import config_from_json
from ..records.run_folder import Task
from ..training.data import ImageData
from ..training.loading import load_data_for
from .students import run_group
from .teacher import load_teacher

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _data(config_json: str) -> ImageData:
    """The dataset of a config, loaded once per worker process."""
    return load_data_for(config_from_json(json.loads(config_json)))


def train_group(config: dict, run_dir: str, tasks: Sequence[tuple[int, int]], threads: int | None = None
                ) -> list[dict]:
    """Worker entry point: train the (rank, seed) ``tasks`` of one group into ``run_dir``; returns their rows.

    Tasks another process is training are waited for, not repeated; finished ones are skipped.
    """
    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_json(config)
    data = _data(json.dumps(config, sort_keys=True))
    teacher = load_teacher(cfg, run_dir, data)
    return run_group(cfg, Path(run_dir), teacher, data, [Task(int(r), int(s)) for r, s in tasks], blocking=True)[0]


class RayExecutor(cf.Executor):
    """A ``concurrent.futures`` face on Ray tasks: each ``submit`` is one Ray task that asks for one GPU when
    the cluster has GPUs (else ``cpus_per_task`` CPUs) and is retried ``max_retries`` times if its worker dies.

    Connects to ``address`` (or ``$RAY_ADDRESS``) when given, else starts a local Ray with ``num_cpus``.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1,
                 max_retries: int = 2) -> None:
        import ray
        self._ray = ray
        self._started = not ray.is_initialized()  # a Ray this executor started is shut down with it
        if self._started:
            address = address or os.environ.get("RAY_ADDRESS")
            ray.init(address=address, num_cpus=None if address else num_cpus, log_to_driver=False,
                     include_dashboard=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        self.cpus_per_task = cpus_per_task
        self._options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus_per_task}
        self._options["max_retries"] = max_retries
        self._refs: list[Any] = []

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        ref = self._ray.remote(**self._options)(fn).remote(*args, **kwargs)
        self._refs.append(ref)
        return ref.future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel what is outstanding if asked; disconnect from (or stop) the Ray this executor started, so
        that the process exits cleanly instead of Ray's workers being killed at interpreter exit."""
        if cancel_futures:
            for ref in self._refs:
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _ray(workers: int | None, ray_address: str | None) -> cf.Executor:
    try:
        return RayExecutor(address=ray_address, num_cpus=workers)
    except ImportError:
        raise ValueError("executor: 'ray' needs Ray: pip install -e '.[ray]'") from None


def _visible_gpus() -> list[str]:
    """The CUDA device ids this process may use: those in ``$CUDA_VISIBLE_DEVICES`` when it is set (indices or
    UUIDs, kept as written), else every GPU torch sees; none on a CPU machine."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_for_worker(index: int, visible: Sequence[str]) -> str | None:
    """The CUDA device id that worker ``index`` gets among the ``visible`` ones (round robin); None when there
    are none."""
    return visible[index % len(visible)] if visible else None


def pin_worker_gpu(counter: Synchronized, visible: Sequence[str]) -> None:
    """``ProcessPoolExecutor`` initializer (runs once per worker process): take the next worker index from the
    shared ``counter`` and let this process see only that worker's GPU, before torch initializes CUDA here, so
    that ``cuda`` and ``auto`` mean that one GPU. Leaves the process as it is when no GPU is visible."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    gpu = gpu_for_worker(index, visible)
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("worker %d (pid %d) uses GPU %s", index, os.getpid(), gpu)


def _processes(workers: int | None, ray_address: str | None) -> cf.Executor:
    """Spawned worker processes, worker ``i`` on visible GPU ``i mod n`` (see :func:`pin_worker_gpu`)."""
    context = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=pin_worker_gpu,
                                  initargs=(context.Value("i", 0), _visible_gpus()))


#: Where a sweep's student groups run, by name: a factory ``(workers, ray_address) -> Executor`` (None for
#: ``local``: in the sweep's own process).
EXECUTORS: dict[str, Callable[[int | None, str | None], cf.Executor] | None] = {
    "local": None,
    "ray": _ray,
    "processes": _processes,
}


def make_executor(kind: str, workers: int | None = None, ray_address: str | None = None) -> cf.Executor | None:
    """The executor a config names (a name in :data:`EXECUTORS`); None runs in this process."""
    factory = EXECUTORS[kind]
    return None if factory is None else factory(workers, ray_address)


def threads_per_task(executor: cf.Executor) -> int:
    """Torch threads for each task: what a Ray task was given, else the cores shared among the workers."""
    if isinstance(executor, RayExecutor):
        return executor.cpus_per_task
    workers = getattr(executor, "_max_workers", None) or 1
    return max(1, (os.cpu_count() or 1) // workers)
