"""Crash-safe files: atomic writes (temp file, fsync, rename), safe checkpoint loading, advisory locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

PAUSE_ENV = "EFFRANK_PAUSE_AT"
PAUSE_DIR_ENV = "EFFRANK_PAUSE_DIR"
CRASH_ENV = "EFFRANK_CRASH_AT"
CRASH_ONCE_ENV = "EFFRANK_CRASH_ONCE"


def fault_point(name: str) -> None:
    """Test hook for fault tests; a no-op unless asked for.

    ``$EFFRANK_PAUSE_AT == name``: announce the pause (an empty ``<name>.paused`` file in ``$EFFRANK_PAUSE_DIR``)
    and wait here to be killed. ``$EFFRANK_CRASH_AT == name``: the first process to get here (the one that
    creates the file ``$EFFRANK_CRASH_ONCE``) kills itself with SIGKILL, as a lost worker would die.
    """
    if os.environ.get(CRASH_ENV) == name:
        try:
            fd = os.open(os.environ[CRASH_ONCE_ENV], os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) != name:
        return
    marker = Path(os.environ.get(PAUSE_DIR_ENV, ".")) / f"{name.replace('/', '_').replace(' ', '_')}.paused"
    marker.touch()
    while True:
        time.sleep(1)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary sibling, fsync it and rename it into place,
    so that readers (and a process killed midway) only ever see the old or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"atomic_write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Atomically ``torch.save`` a dict of tensors, state dicts and plain values."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing pickled code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Advisory exclusive lock on ``path`` (created if needed); yields whether it was acquired.

    The kernel releases it when the holder exits, killed or not, so a crashed worker never leaves a stale lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            acquired = True
        except BlockingIOError:
            acquired = False
        yield acquired
    finally:
        os.close(fd)


def ensure_writable_dir(path: str | Path, field: str = "run_dir") -> Path:
    """Create ``path`` if needed and check that files can be written there (clear error if not)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{field}: {str(path)!r} is not a writable directory ({exc.strerror})") from None
    return path
