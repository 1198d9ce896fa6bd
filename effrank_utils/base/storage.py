"""Crash-safe files: atomic writes (temp file, fsync, rename), safe loading that names a damaged file, file locks
that say who holds them, and the test-only fault hooks."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

log = logging.getLogger(__name__)

PAUSE_ENV = "EFFRANK_PAUSE_AT"
PAUSE_DIR_ENV = "EFFRANK_PAUSE_DIR"
CRASH_ENV = "EFFRANK_CRASH_AT"
CRASH_ONCE_ENV = "EFFRANK_CRASH_ONCE"
TEMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
LOCK_ANNOUNCE_SECONDS = 30.0


class CorruptFile(ValueError):
    """A file cannot be read; the message names it and says what to do."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file: mkstemp's 0600 would hide results


def fault_point(name: str) -> None:
    """Test hook for fault tests; a no-op unless both of its variables are set.

    ``$EFFRANK_PAUSE_AT == name`` and ``$EFFRANK_PAUSE_DIR`` an existing folder: say so on stderr, announce the
    pause (an empty ``<name>.paused`` file in that folder) and wait here to be killed.
    ``$EFFRANK_CRASH_AT == name`` and ``$EFFRANK_CRASH_ONCE`` set: the first process to get here (the one that
    creates the file ``$EFFRANK_CRASH_ONCE``) kills itself with SIGKILL, as a lost worker would die.
    """
    if os.environ.get(CRASH_ENV) == name and os.environ.get(CRASH_ONCE_ENV):
        try:
            fd = os.open(os.environ[CRASH_ONCE_ENV], os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.close(fd)
        print(f"effrank: test hook {CRASH_ENV}={name!r}: killing this process", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    pause_dir = os.environ.get(PAUSE_DIR_ENV)
    if os.environ.get(PAUSE_ENV) != name or not pause_dir or not Path(pause_dir).is_dir():
        return
    print(f"effrank: test hook {PAUSE_ENV}={name!r} is set: pausing here until killed "
          f"(unset {PAUSE_ENV} to run normally)", file=sys.stderr, flush=True)
    (Path(pause_dir) / f"{name.replace('/', '_').replace(' ', '_')}.paused").touch()
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
    so that readers (and a process killed midway) only ever see the old or the new complete file. The file
    gets the permissions the umask gives any new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"atomic_write:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a full disk says which write it stopped
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(folder: str | Path, owners: Collection[str] | None = None,
                             older_than: float = 600.0) -> list[Path]:
    """Delete the temporary files that writes killed midway left in ``folder`` (not below it): those of
    :func:`atomic_write` for a file named in ``owners`` (any, if None), untouched for ``older_than`` seconds so
    that a write in progress elsewhere is never disturbed. Returns them."""
    cutoff = time.time() - older_than
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if owners is not None and not any(tmp.name.startswith(f".{owner}.") for owner in owners):
            continue
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write", len(removed))
    return removed


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path, what_to_do: str = "restore it or delete it") -> Any:
    """Parse a JSON file; a damaged one raises :class:`CorruptFile` naming it and ``what_to_do``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: damaged JSON ({exc}); {what_to_do}") from None


def quarantine(path: str | Path) -> Path:
    """Move a damaged file aside as ``<name>.corrupt`` (numbered if that exists) and return the new path."""
    path = Path(path)
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{number}")
    os.replace(path, target)
    return target


@functools.lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    """A hex digest of a file's content, computed once per version of the file (its size and mtime)."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return _digest(path, stat.st_size, stat.st_mtime_ns)


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Atomically ``torch.save`` a dict of tensors, state dicts and plain values."""
    import torch
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: Any = "cpu", what_to_do: str = "delete it to start over"
                    ) -> dict:
    """Load a checkpoint without executing pickled code (``weights_only=True``). A file that cannot be read
    raises :class:`CorruptFile` naming it, the reason and ``what_to_do``."""
    import torch
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated, empty, random bytes or a forbidden pickle: torch raises many kinds
        raise CorruptFile(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); {what_to_do}") from None
    if not isinstance(payload, dict):
        raise CorruptFile(f"{path}: not an effrank checkpoint (holds a {type(payload).__name__}); {what_to_do}")
    return payload


def _holder(fd: int) -> str:
    """Who holds a lock, from what its holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = {}
    if not info:
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} since {info.get('since')}"


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True, announce_every: float = LOCK_ANNOUNCE_SECONDS
              ) -> Iterator[bool]:
    """Advisory exclusive lock on ``path`` (created if needed); yields whether it was acquired.

    The kernel releases it when the holder exits, killed or not, so a crashed worker never leaves a stale lock.
    The holder writes its pid, host and start time into the file; a blocking caller that has to wait logs
    which process holds the lock every ``announce_every`` seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        acquired = _acquire(fd, path, blocking, announce_every)
        if acquired:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": datetime.now().isoformat(timespec="seconds")}).encode(), 0)
        yield acquired
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, blocking: bool, announce_every: float) -> bool:
    waited_since = time.monotonic()
    next_announcement = waited_since
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not blocking:
                return False
        now = time.monotonic()
        if now >= next_announcement:
            log.warning("waiting for %s: held by %s (waited %.0f s)", path.name, _holder(fd), now - waited_since)
            next_announcement = now + announce_every
        time.sleep(min(0.5, announce_every))


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
