"""The daemon's runs: the queue, the concurrency rules, and each run as a child `backupd run/drill/verify` in a
session of its own, supervised until it exits (timeouts, stop, the record of a run we had to kill)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from backupd.daemon.sdnotify import Notifier, child_environ
from backupd.daemon.watch import Watcher
from backupd.errors import EXIT_LOCKED
from backupd.logs import EventLog
from backupd.settings import Config
from backupd.store.catalog import Catalog, now_iso

Kind = Literal["backup", "drill", "verify"]
STOP_GRACE = float(os.environ.get("BACKUPD_STOP_GRACE", "30"))  # SIGTERM -> SIGKILL for a child


@dataclass
class Task:
    """A run waiting for a slot (proc None) or running."""

    job: str
    kind: Kind
    trigger: str
    fire: datetime | None
    not_before: float  # wall clock, for jitter
    timeout: float
    proc: subprocess.Popen[bytes] | None = None
    started_wall: float = 0.0
    started_mono: float = 0.0
    term_at: float | None = None  # monotonic time SIGTERM was sent
    reason: str | None = None  # "timeout" | "stop"

    @property
    def key(self) -> tuple[str, Kind]:
        return (self.job, self.kind)


class Runs:
    """The run queue and the running children (a part of `Daemon`, which sets these attributes)."""

    config: Config
    events: EventLog
    queue: list[Task]
    running: dict[int, Task]
    force_kill: bool
    notifier: Notifier
    watcher: Watcher
    _catalog: Catalog | None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.config.state_dir)
        return self._catalog

    def _catalog_reset(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _enqueue(self, name: str, kind: Kind, trigger: str, fire: datetime | None, why: str) -> None:
        """Queue a run unless one of the same job and kind is already queued or running (coalesced)."""
        key = (name, kind)
        if any(t.key == key for t in self.queue) or any(t.key == key for t in self.running.values()):
            self.events.event("coalesced", job=name, kind=kind, trigger=trigger, reason="already queued or running")
            return
        jitter = self.config.settings.scheduler.jitter
        delay = random.uniform(0, jitter) if jitter else 0.0  # noqa: S311 -- spreading load, not security
        job = self.config.jobs[name]
        self.queue.append(Task(name, kind, trigger, fire, time.time() + delay, float(job.timeout)))
        self.events.event(
            "queued",
            job=name,
            kind=kind,
            trigger=trigger,
            reason=why,
            fire=fire.isoformat() if fire else None,
            delay=round(delay, 3) or None,
        )

    def _busy(self, task: Task) -> bool:
        """A job's backup and drill never overlap: the drill reads what the backup may prune. A
        re-verification waits for both, but never holds up a backup: it skips the backups of a job whose run
        holds the lock, and reads each backup under its read lock, so a run beside it is safe."""
        return any(
            t.job == task.job and (task.kind == "verify" or t.kind != "verify") for t in self.running.values()
        )

    def _dispatch(self) -> None:
        limit = self.config.settings.scheduler.max_concurrent_jobs
        wall = time.time()
        for task in sorted(self.queue, key=lambda t: t.not_before):
            # the one re-verification allowed at a time runs beside the limit: it never takes a backup's slot
            busy = sum(1 for t in self.running.values() if t.kind != "verify")
            verifying = any(t.kind == "verify" for t in self.running.values())
            if task.kind == "verify" and verifying:
                continue
            if task.kind != "verify" and busy >= limit:
                continue
            if task.not_before > wall or self._busy(task):
                continue
            self.queue.remove(task)
            self._spawn(task)

    def _argv(self, task: Task) -> list[str]:
        base = [sys.executable, "-m", "backupd", "--config", str(self.config.path)]
        if task.kind == "drill":
            return [*base, "drill", task.job]
        if task.kind == "verify":
            return [*base, "verify", task.job, "--scheduled"]
        return [*base, "run", task.job, "--trigger", task.trigger]

    def _spawn(self, task: Task) -> None:
        try:
            proc = subprocess.Popen(
                self._argv(task),
                stdin=subprocess.DEVNULL,
                env=child_environ(),
                start_new_session=True,
            )
        except OSError as exc:
            self.events.event("spawn_failed", job=task.job, kind=task.kind, error=str(exc))
            return
        task.proc = proc
        task.started_wall, task.started_mono = time.time(), time.monotonic()
        self.running[proc.pid] = task
        lag = task.started_wall - task.fire.timestamp() if task.fire and task.trigger == "schedule" else None
        self.events.event(
            "spawned",
            job=task.job,
            kind=task.kind,
            trigger=task.trigger,
            pid=proc.pid,
            fire=task.fire.isoformat() if task.fire else None,
            lag=round(lag, 3) if lag is not None else None,
        )

    # ------------------------------------------------------------ children

    def _reap(self) -> None:
        for pid, task in list(self.running.items()):
            assert task.proc is not None
            rc = task.proc.poll()
            if rc is None:
                continue
            del self.running[pid]
            self._finished(task, rc)

    def _finished(self, task: Task, rc: int) -> None:
        duration = round(time.time() - task.started_wall, 3)
        pid = task.proc.pid if task.proc else 0
        if task.reason == "timeout":
            error = f"job {task.job}: {task.kind} timed out after {task.timeout:.0f}s (stopped by the daemon)"
            self._record_killed(task, pid, error, overwrite=True)
            if task.kind != "verify":  # a re-verification resumes; its verdicts say what it found
                event = "failure" if task.kind == "backup" else "drill_failure"
                self.watcher.failure(task.job, "timeout", error, event)
        elif rc < 0 and task.kind in ("backup", "drill"):
            what = "run" if task.kind == "backup" else "drill"
            error = f"job {task.job}: {what} killed by signal {signal.Signals(-rc).name}"
            self._record_killed(task, pid, error, overwrite=False)
            if task.reason is None:  # not our own stop: nobody else will say it
                self.watcher.failure(task.job, "killed", error, "failure" if task.kind == "backup" else "drill_failure")
        if task.reason is not None and task.proc is not None:
            # a run we stopped may leave helpers (ssh, rsync) in its session; the group outlives its leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(task.proc.pid, signal.SIGKILL)
        outcome = {0: "ok", EXIT_LOCKED: "skipped"}.get(rc, "failed")
        self.events.event(
            "exited",
            job=task.job,
            kind=task.kind,
            trigger=task.trigger,
            pid=pid,
            rc=rc,
            outcome=outcome,
            duration=duration,
            reason=task.reason,
            message="already running (the other run holds the lock)" if rc == EXIT_LOCKED else None,
        )

    def _record_killed(self, task: Task, pid: int, error: str, overwrite: bool) -> None:
        """A SIGKILLed child cannot record its failure; a timed-out one records "interrupted", we say why."""
        if task.kind == "verify":  # records its verdicts backup by backup: an interrupted one resumes
            return
        since = datetime.fromtimestamp(task.started_wall - 1, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            if task.kind == "drill":
                self.catalog.db.execute(
                    "UPDATE drills SET outcome='failed', error=?, finished_at=COALESCE(finished_at, ?)"
                    " WHERE job=? AND started_at>=? AND (outcome='running' OR ?)",
                    (error, now_iso(), task.job, since, overwrite),
                )
                return
            cur = self.catalog.db.execute(
                "UPDATE runs SET outcome='failed', error=?, step=COALESCE(step, 'killed'),"
                " finished_at=COALESCE(finished_at, ?) WHERE job=? AND pid=? AND started_at>=?"
                " AND (outcome='running' OR ?)",
                (error, now_iso(), task.job, pid, since, overwrite),
            )
            if cur.rowcount == 0 and overwrite:  # killed before it even recorded its start
                self.catalog.db.execute(
                    "INSERT INTO runs (job, trigger, started_at, finished_at, outcome, error, step, pid, duration)"
                    " VALUES (?, ?, ?, ?, 'failed', ?, 'start', ?, ?)",
                    (
                        task.job,
                        task.trigger,
                        _iso(task.started_wall),
                        now_iso(),
                        error,
                        pid,
                        time.time() - task.started_wall,
                    ),
                )
        except Exception as exc:  # the catalog must not take the scheduler down
            self.events.event("warning", job=task.job, error=f"could not record the failure: {exc}")

    def _signal(self, task: Task, sig: signal.Signals) -> None:
        """Only PIDs we started and have not reaped (so they cannot be reused); SIGKILL takes the whole
        session (rsync, ssh, dump tools) with it, since a killed run cannot clean up its own children."""
        assert task.proc is not None
        if task.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(task.proc.pid, sig)
            else:
                os.kill(task.proc.pid, sig)

    def _enforce_timeouts(self, mono: float) -> None:
        for task in self.running.values():
            if task.term_at is None and mono >= task.started_mono + task.timeout:
                task.reason = "timeout"
                task.term_at = mono
                self.events.event(
                    "timeout",
                    job=task.job,
                    kind=task.kind,
                    pid=task.proc.pid if task.proc else None,
                    timeout=task.timeout,
                )
                self._signal(task, signal.SIGTERM)
            elif task.term_at is not None and (mono >= task.term_at + STOP_GRACE or self.force_kill):
                self.events.event("kill", job=task.job, kind=task.kind, pid=task.proc.pid if task.proc else None)
                self._signal(task, signal.SIGKILL)

    def _stop_children(self, mono: float) -> None:
        if self.queue:
            self.events.event("stopping", dropped=[t.job for t in self.queue], running=len(self.running))
            self.queue.clear()
        for task in self.running.values():
            if task.term_at is None:
                task.reason = task.reason or "stop"
                task.term_at = mono
                self._signal(task, signal.SIGTERM)
        if self.running:
            self.notifier.stopping(f"stopping: waiting for {len(self.running)} run(s)")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
