"""One writer per database file: an exclusive ``flock`` on ``<file>.lock``, held for life.

A ledger must have one writer process at a time: its writer keeps event sequence numbers in
memory and the hub caches transactions, so a second hub on the same file starts happily and
then fails charges on duplicate event numbers and disagrees with the first about orders.

The lock is an ``flock`` on a file beside the database (SQLite itself uses POSIX record
locks on the database file; the two kinds are independent, and a separate file keeps them
so on filesystems that emulate one with the other). The kernel releases it when the last
descriptor of it closes, so a ``kill -9`` never leaves a stale lock. The node passes the
descriptor to its writer process: the lock is free only when both have exited, so a new
node cannot open the ledger while the old writer may still be committing its last batch.

The holder writes its pid into the file. A second process reads it to say who holds the
lock; if that pid no longer exists, the holder is a writer finishing after its node died,
and the newcomer waits for it (up to ``ORPHAN_WAIT_S``) instead of refusing.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_SUFFIX = ".lock"
LOCK_FILE_MODE = 0o600
PID_BYTES_MAX = 32
# A writer whose node died sees end-of-file and exits after its current commit and the
# closing checkpoint; seconds at most, even with a large WAL. Past this the newcomer refuses.
ORPHAN_WAIT_S = 30.0
POLL_INTERVAL_S = 0.05


class LockHeld(Exception):
    """Another process owns the file; the message is one line naming the file and pid."""


class FileLock:
    """A held lock. ``fd`` may be passed to child processes, which then hold it too."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_path(data_path: Path | str) -> Path:
    """The lock file of ``data_path``, beside the file it really is: a ledger opened through
    a symbolic link (or a relative path, or ``..``) is one file, so it gets one lock."""
    data_path = Path(data_path).resolve()
    return data_path.with_name(data_path.name + LOCK_SUFFIX)


def _holder(fd: int) -> int | None:
    raw = os.pread(fd, PID_BYTES_MAX, 0).strip()
    return int(raw) if raw.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def acquire(data_path: Path | str, what: str, *,
            orphan_wait_s: float = ORPHAN_WAIT_S) -> FileLock:
    """Take the exclusive lock for ``data_path`` or raise ``LockHeld``.

    ``what`` names the file's role in the message ("ledger", ...). Refuses at once while the
    recorded holder is alive; waits up to ``orphan_wait_s`` while it is gone (or not yet
    recorded), since then only its writer process can still be holding the lock.
    """
    path = lock_path(data_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_FILE_MODE)
    deadline = time.monotonic() + orphan_wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pid = _holder(fd)
                if pid is not None and _alive(pid):
                    raise LockHeld(
                        f"{what} {data_path} is in use by another process (pid {pid}, lock "
                        f"{path}); stop it first, or give this process its own file"
                    ) from None
                if time.monotonic() >= deadline:
                    who = f"pid {pid} has exited" if pid is not None else "no pid recorded"
                    raise LockHeld(
                        f"{what} {data_path} is still locked ({path}; {who}, a child of it "
                        f"still holds the lock after {orphan_wait_s:g} s); find it with "
                        f"`fuser {path}`") from None
                time.sleep(POLL_INTERVAL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return FileLock(path, fd)
