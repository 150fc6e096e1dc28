"""The per-job run lock: one flock'd file per job in the state dir, holding the holder's PID."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from backupd.errors import LockedError
from backupd.fsutil import ensure_private_dir


@contextmanager
def job_lock(state_dir: Path, job: str) -> Iterator[None]:
    """flock on a per-job file: a second run of the same job exits 75 without touching anything."""
    lock_dir = ensure_private_dir(state_dir / "locks")
    fd = os.open(lock_dir / f"{job}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(f"job {job}: already running (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def all_job_locks(state_dir: Path, jobs: Iterable[str]) -> Iterator[None]:
    """Every job's run lock at once (`catalog rebuild`): LockedError naming the first job that is running."""
    with ExitStack() as stack:
        for job in sorted(set(jobs)):
            stack.enter_context(job_lock(state_dir, job))
        yield


def job_running(state_dir: Path, job: str) -> bool:
    """Is a run (or prune, or S3 re-copy) of `job` holding its lock right now? A probe: taken and let go."""
    path = state_dir / "locks" / f"{job}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock we may have taken
    return False
