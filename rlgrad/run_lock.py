"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock`` while a run lives.

``hold_run_dir(run_dir)`` takes the lock (creating the directory if need be) and writes the
holder's PID into the lock file; a second process that would write into the directory (a
second ``rlgrad train --overwrite`` while the run is going, two ``--resume`` of one directory)
gets :class:`RunDirInUse` naming that PID, before it has touched anything. The operating
system releases a ``flock`` when its process dies, so a run killed with SIGKILL never leaves a
stale lock: its ``.lock`` file stays behind, holding a dead PID, and the next run takes it over.

On a normal release the lock file is removed while still locked, and whoever locks a file
checks afterwards that it is still the one at ``RUN_DIR/.lock`` (else it tries again): a
directory whose run ended holds no ``.lock``, and two processes never both hold the lock.
Within one process the lock is re-entrant for the thread that holds it (``rlgrad train``
holds it around ``--overwrite``'s clean-up and :func:`rlgrad.runner.train` takes it again).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlgrad.errors import UsageError

LOCK_FILE = ".lock"

_held: dict[Path, tuple[int, int, int]] = {}  # resolved run dir -> (fd, depth, thread id)
_guard = threading.Lock()


class RunDirInUse(UsageError):
    """Another process (or thread) holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: int | None):
        self.run_dir, self.pid = run_dir, pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"{run_dir} is in use by another rlgrad process ({holder}); wait for it or use "
            "another --run-dir"
        )


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block; yields the lock file's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    thread = threading.get_ident()
    with _guard:
        held = _held.get(key)
        if held is not None:
            fd, depth, owner = held
            if owner != thread:
                raise RunDirInUse(run_dir, os.getpid())
            _held[key] = (fd, depth + 1, owner)
        else:
            _held[key] = (_acquire(run_dir / LOCK_FILE, run_dir), 1, thread)
    try:
        yield run_dir / LOCK_FILE
    finally:
        with _guard:
            fd, depth, owner = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1, owner)
            else:
                del _held[key]
                _release(run_dir / LOCK_FILE, fd)


def holder_pid(run_dir: str | Path) -> int | None:
    """The PID written in ``run_dir``'s lock file (a live holder's, or a killed run's)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _acquire(path: Path, run_dir: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _wait_for_pid(fd)
            os.close(fd)
            raise RunDirInUse(run_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, path):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the file there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(path: Path, fd: int) -> None:
    try:
        if _is_current(fd, path):
            path.unlink()  # while still locked: a process that opened it sees it is gone
    except OSError:
        pass  # the directory went away under the run: nothing left to clean
    finally:
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path`` (not one removed since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _wait_for_pid(fd: int, attempts: int = 20) -> int | None:
    """The holder's PID; it writes it just after locking, so wait a moment for it."""
    for _ in range(attempts):
        pid = _read_pid(fd)
        if pid is not None:
            return pid
        time.sleep(0.01)
    return None
