"""Shared fixtures: quiet warnings, an isolated cache, the offline CIFAR-10 tree when present, and a snapshot of
a folder's files (to show that reading or viewing results writes nothing)."""

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EFFRANK_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EFFRANK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*break-even.*")
        yield


@pytest.fixture(scope="session")
def cifar10_folder() -> Path:
    root = SHARED_DATA / "cifar10"
    if not (root / "train").is_dir():
        pytest.skip(f"offline CIFAR-10 tree not found at {root}")
    return root


FileState = tuple[int, int, str]  # size, mtime (ns), content digest


def folder_snapshot(folder: Path) -> dict[str, FileState]:
    """Every file under ``folder``, by relative path: its size, mtime and content digest."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, FileState]]:
    """:func:`folder_snapshot`: equal before and after means nothing under the folder was written."""
    return folder_snapshot
