"""What made a result besides its config and data: the versions of effrank and the libraries that compute, the
torch thread count (sums are reduced in another order with another count), the device, and the code's commit when
effrank runs from a git checkout. Recorded in ``config.json`` and ``summary.json``; ``effrank compare`` warns when
studies differ in any of it."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

from ..version import __version__

PACKAGES = ("torch", "torchvision", "timm", "numpy")
CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding effrank_utils/: a git checkout, or not


def device_name(device: torch.device) -> str:
    """The GPU model (``NVIDIA H200``), or the CPU's (``cpu: x86_64``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}"


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The checkout's commit (``+ uncommitted changes`` when its tracked files differ), or None when effrank is not
    run from a git checkout (an installed package) or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != CHECKOUT:
            return None  # effrank installed inside some other repository
        commit = git("rev-parse", "HEAD")
        return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """This process's computing environment, JSON-ready."""
    return {"effrank": __version__, **{name: importlib.metadata.version(name) for name in PACKAGES},
            "torch_threads": torch.get_num_threads(), "device": device_name(device), "commit": code_commit()}
