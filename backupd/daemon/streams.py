"""The daemon's PITR streams: one `backupd stream JOB` child per PITR job, restarted with backoff.

A stream is a long-lived child, not a scheduled task: it does not count against `max_concurrent_jobs` and
holds its own lock (`JOB.stream`), so the job's dumps still run beside it. It reconnects to its server
by itself; the daemon only restarts the process when it exits (1 s, doubling to 5 min; reset after it ran
10 minutes). On SIGTERM the daemon sends SIGTERM to each stream, which commits its open segment and exits;
one still running after the grace period is killed (its open segment is streamed again next time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backupd.errors import EXIT_LOCKED
from backupd.logs import EventLog

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
HEALTHY_AFTER = 600.0  # a stream that ran this long starts over at the first backoff when it exits
STOP_GRACE = 30.0


@dataclass
class StreamChild:
    job: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float = 0.0
    term_at: float | None = None
    restarts: int = 0


class StreamSupervisor:
    def __init__(self, config_path: Callable[[], Path], events: EventLog, environ: Callable[[], dict[str, str]]):
        self._config_path = config_path
        self._events = events
        self._environ = environ
        self.children: dict[str, StreamChild] = {}
        self.stopping = False

    def update(self, jobs: list[str]) -> None:
        """The PITR jobs of the (re)loaded config: new ones start, removed ones are stopped."""
        for name in jobs:
            self.children.setdefault(name, StreamChild(name))
        for name, child in list(self.children.items()):
            if name not in jobs:
                if child.proc is None:
                    del self.children[name]
                else:
                    self._terminate(child, time.monotonic())
                    child.restart_at = float("inf")

    def tick(self, mono: float) -> None:
        for name, child in list(self.children.items()):
            if child.proc is not None:
                rc = child.proc.poll()
                if rc is not None:
                    self._exited(child, rc, mono)
            if child.proc is not None and child.term_at is not None and mono - child.term_at > STOP_GRACE:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
            if child.proc is None and child.restart_at == float("inf"):
                del self.children[name]
                continue
            if child.proc is None and not self.stopping and mono >= child.restart_at:
                self._spawn(child, mono)

    def _spawn(self, child: StreamChild, mono: float) -> None:
        argv = [sys.executable, "-m", "backupd", "--config", str(self._config_path()), "stream", child.job]
        try:
            child.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=self._environ(), start_new_session=True)
        except OSError as exc:
            self._events.event("stream_spawn_failed", job=child.job, error=str(exc))
            child.restart_at = mono + child.backoff
            child.backoff = min(BACKOFF_MAX, child.backoff * 2)
            return
        child.started, child.term_at = mono, None
        self._events.event("stream_started", job=child.job, pid=child.proc.pid, restarts=child.restarts)

    def _exited(self, child: StreamChild, rc: int, mono: float) -> None:
        assert child.proc is not None
        pid = child.proc.pid
        child.proc = None
        if mono - child.started >= HEALTHY_AFTER:
            child.backoff = BACKOFF_FIRST
        stopped = child.term_at is not None
        child.term_at = None
        if not stopped and not self.stopping:
            child.restarts += 1
            child.restart_at = mono + child.backoff
            why = "another stream holds the lock" if rc == EXIT_LOCKED else None
            self._events.event("stream_exited", job=child.job, pid=pid, rc=rc, restart_in=child.backoff, message=why)
            child.backoff = min(BACKOFF_MAX, child.backoff * 2)
        else:
            self._events.event("stream_stopped", job=child.job, pid=pid, rc=rc)

    def _terminate(self, child: StreamChild, mono: float) -> None:
        if child.proc is not None and child.term_at is None:
            child.term_at = mono
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)

    def stop_all(self, mono: float, force: bool = False) -> None:
        """SIGTERM every stream (each commits its open segment); `force` (a second SIGTERM): SIGKILL now."""
        self.stopping = True
        for child in self.children.values():
            self._terminate(child, mono)
            if force and child.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)

    def alive(self) -> int:
        return sum(1 for c in self.children.values() if c.proc is not None)

    def next_wake(self, mono: float) -> float:
        """Seconds until the supervisor needs a tick (a restart due, a kill after the grace period)."""
        waits = [60.0]
        for c in self.children.values():
            if c.proc is None and not self.stopping and c.restart_at != float("inf"):
                waits.append(c.restart_at - mono)
            if c.term_at is not None:
                waits.append(c.term_at + STOP_GRACE - mono)
        return max(0.0, min(waits))

    def pids(self) -> dict[str, int]:
        return {name: c.proc.pid for name, c in self.children.items() if c.proc is not None}
