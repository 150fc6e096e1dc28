"""The scheduler: sleeps until the next fire time, starts each due run as a child `backupd run JOB`.

The daemon only schedules (docs/architecture.md). Runs are child processes in their own sessions, so a crash in
one cannot take the daemon down, and the child's own lock and SIGTERM handling (partial removed, failure
recorded) are the same as for a manual run. The loop blocks in one `select` on a self-pipe that signal
handlers (SIGCHLD, SIGTERM, SIGINT, SIGHUP) write to, with a timeout to the nearest of: a fire time, a
queued run's jitter, a run's timeout, the watchdog ping and a heartbeat. The heartbeat (every 30 s at most)
keeps /health honest and notices wall-clock jumps (suspend/resume) against the monotonic clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal

from backupd.actions.stream import pitr_jobs
from backupd.config import load_config
from backupd.daemon.metrics import make_registry, render
from backupd.daemon.page import render_page
from backupd.daemon.sdnotify import Notifier, child_environ
from backupd.daemon.status import all_status, notify_status
from backupd.daemon.streams import StreamSupervisor
from backupd.daemon.watch import Watcher
from backupd.errors import EXIT_LOCKED, EXIT_OK, BackupdError
from backupd.logs import EventLog
from backupd.schedule import Schedule
from backupd.settings import Config
from backupd.store.catalog import Catalog, now_iso

Kind = Literal["backup", "drill", "verify"]
HEARTBEAT = 30.0  # longest sleep: /health staleness, clock-jump detection
HEALTH_STALE = 3 * HEARTBEAT
STOP_GRACE = float(os.environ.get("BACKUPD_STOP_GRACE", "30"))  # SIGTERM -> SIGKILL for a child
CLOCK_JUMP = 30.0  # wall clock moved this much more (or less) than the monotonic clock: a suspend or a step
LATE = 60.0  # a fire noticed later than this was missed (suspend, clock step): catch-up rules apply


@dataclass
class Entry:
    """One schedule the daemon follows: a job's backups or its drills."""

    job: str
    kind: Kind
    sched: Schedule
    next_fire: datetime


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


@dataclass
class Snapshot:
    """What the HTTP thread reads; replaced as a whole by the loop, never mutated."""

    heartbeat: float = 0.0
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    queued: list[dict[str, Any]] = field(default_factory=list)
    next_fire: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Daemon:
    def __init__(self, config: Config, events: EventLog) -> None:
        self.config = config
        self.events = events
        self.entries: dict[tuple[str, Kind], Entry] = {}
        self.queue: list[Task] = []
        self.running: dict[int, Task] = {}
        self.stopping = False
        self.reload_requested = False
        self.force_kill = False
        self.notifier = Notifier()
        self.snapshot = Snapshot()
        self.http: ThreadingHTTPServer | None = None
        self._catalog: Catalog | None = None
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._last_wall = time.time()
        self._last_mono = time.monotonic()
        self._next_watchdog = 0.0
        self._status_text = ""
        self.watcher = Watcher(lambda: self.config, events)
        self.streams = StreamSupervisor(lambda: self.config.path, events, child_environ)  # PITR jobs' streams

    # ------------------------------------------------------------ setup

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.config.state_dir)
        return self._catalog

    def _build_entries(self, now: datetime) -> None:
        old = self.entries
        self.entries = {}
        for name, job in sorted(self.config.jobs.items()):
            if not job.enabled:
                continue
            tz = self.config.job_timezone(name)
            verify = self.config.settings.scheduler.verify_schedule or None
            exprs: list[tuple[Kind, str | None, str]] = [
                ("backup", job.schedule, tz),
                ("drill", job.drill_schedule, tz),
                ("verify", verify, self.config.settings.scheduler.timezone),  # every job's kept backups re-proven
            ]
            for kind, expr, tz in exprs:
                if not expr:
                    continue
                sched = Schedule.parse(expr, tz)
                prev = old.get((name, kind))
                if prev is not None and prev.sched.expr == expr and prev.sched.tz == tz:
                    self.entries[(name, kind)] = prev
                else:
                    self.entries[(name, kind)] = Entry(name, kind, sched, sched.next_after(now))

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)

        def on_stop(signum: int, frame: FrameType | None) -> None:
            if self.stopping:
                self.force_kill = True
            self.stopping = True

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        def on_chld(signum: int, frame: FrameType | None) -> None:
            pass  # the wakeup fd is the point

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGCHLD, on_chld)

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        self._install_signals()
        now = datetime.now(UTC)
        self._build_entries(now)
        self._start_http()
        self.watcher.start()
        self.events.event(
            "daemon_start",
            pid=os.getpid(),
            jobs=len(self.config.jobs),
            config=str(self.config.path),
            max_concurrent_jobs=self.config.settings.scheduler.max_concurrent_jobs,
        )
        self._catch_up(now, "start")
        self.streams.update(pitr_jobs(self.config))
        self._dispatch()
        self._publish()
        self.notifier.ready(self._status_line())
        self._ping_watchdog(time.monotonic())
        sel = selectors.DefaultSelector()
        sel.register(self._rfd, selectors.EVENT_READ)
        try:
            while True:
                self._tick()
                if self.stopping and not self.running and not self.streams.alive():
                    break
                timeout = self._sleep_for()
                if sel.select(timeout):
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._rfd, 512):
                            pass
        finally:
            sel.close()
            self.watcher.stop()
            if self.http is not None:
                self.http.server_close()
            if self._catalog is not None:
                self._catalog.close()
        self.events.event("daemon_stop", pid=os.getpid())
        self.notifier.close()
        return EXIT_OK

    def _tick(self) -> None:
        wall, mono = time.time(), time.monotonic()
        drift = (wall - self._last_wall) - (mono - self._last_mono)
        self._last_wall, self._last_mono = wall, mono
        now = datetime.fromtimestamp(wall, UTC)
        self._reap()
        if self.stopping:
            self._stop_children(mono)
            self.streams.stop_all(mono, force=self.force_kill)
        else:
            if self.reload_requested:
                self.reload_requested = False
                self._reload(now)
            if abs(drift) > CLOCK_JUMP:
                self.events.event("clock_jump", seconds=round(drift, 1))
                for e in self.entries.values():
                    e.next_fire = min(e.next_fire, e.sched.next_after(now))
                self._catch_up(now, "clock jump")
            self._fire_due(now)
            self._dispatch()
        self.streams.tick(mono)
        self._enforce_timeouts(mono)
        self._publish()
        self._ping_watchdog(mono)

    def _sleep_for(self) -> float:
        wall, mono = time.time(), time.monotonic()
        waits = [HEARTBEAT, self.streams.next_wake(mono)]
        if self.notifier.watchdog_interval:
            waits.append(self._next_watchdog - mono)
        if not self.stopping:
            waits.extend(e.next_fire.timestamp() - wall for e in self.entries.values())
            if len(self.running) < self.config.settings.scheduler.max_concurrent_jobs:
                waits.extend(t.not_before - wall for t in self.queue if not self._busy(t))
        for t in self.running.values():
            if t.term_at is not None:
                waits.append(t.term_at + STOP_GRACE - mono)
            else:
                waits.append(t.started_mono + t.timeout - mono)
        return max(0.0, min(waits))

    # ------------------------------------------------------------ scheduling

    def _catch_up(self, now: datetime, why: str) -> None:
        """A schedule whose latest fire time has no successful run after it runs once (catchup = "once")."""
        mode = self.config.settings.scheduler.catchup
        for (name, kind), e in self.entries.items():
            if kind == "verify":  # background work: a missed re-verification waits for its next fire time
                continue
            latest = e.sched.latest_at_or_before(now)
            if latest is None:
                continue
            last_ok = self._last_ok(name, kind)
            if last_ok is not None and last_ok >= latest:
                continue
            if mode == "none":
                self.events.event("missed", job=name, kind=kind, fire=latest.isoformat(), reason=why, catchup="none")
                continue
            self._enqueue(name, kind, "catchup", latest, why)

    def _last_ok(self, name: str, kind: Kind) -> datetime | None:
        if kind == "verify":  # any outcome: a verification that found a bad backup still ran
            at = self.catalog.db.execute("SELECT MAX(at) FROM verifications WHERE job=?", (name,)).fetchone()[0]
            return datetime.fromisoformat(at) if at else None
        if kind == "backup":
            row = self.catalog.last_success(name)
        else:
            row = self.catalog.db.execute(
                "SELECT started_at FROM drills WHERE job=? AND outcome='ok' ORDER BY id DESC LIMIT 1", (name,)
            ).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row["started_at"] if kind == "backup" else row[0])

    def _fire_due(self, now: datetime) -> None:
        for e in self.entries.values():
            if e.next_fire > now:
                continue
            fire = e.next_fire
            e.next_fire = e.sched.next_after(now)
            late = (now - fire).total_seconds()
            if late <= LATE:
                self._enqueue(e.job, e.kind, "schedule", fire, "schedule")
            elif self.config.settings.scheduler.catchup == "once":
                self._enqueue(e.job, e.kind, "catchup", fire, f"fire noticed {late:.0f}s late")
            else:
                self.events.event("missed", job=e.job, kind=e.kind, fire=fire.isoformat(), catchup="none")

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

    # ------------------------------------------------------------ reload, status, watchdog

    def _reload(self, now: datetime) -> None:
        try:
            new = load_config(self.config.path)
        except BackupdError as exc:
            self.events.event("reload_failed", error=str(exc), kept="previous configuration")
            return
        if new.settings.http.listen != self.config.settings.http.listen:
            self.events.event("warning", message="http.listen changed: restart the daemon to apply it")
        self.config = new
        self._catalog_reset()
        self._build_entries(now)
        self.queue = [t for t in self.queue if (t.job, t.kind) in self.entries]
        self.streams.update(pitr_jobs(new))
        self.events.event("reloaded", jobs=len(new.jobs))

    def _catalog_reset(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _status_line(self) -> str:
        nxt = min(self.entries.values(), key=lambda e: e.next_fire, default=None)
        text = f"{len(self.entries)} schedule(s), {len(self.running)} running, {len(self.queue)} queued"
        if nxt is not None:
            text += f"; next {nxt.job} {nxt.kind} at {nxt.next_fire:%Y-%m-%d %H:%M} UTC"
        return text

    def _publish(self) -> None:
        self.snapshot = Snapshot(
            heartbeat=time.monotonic(),
            running={
                t.job: {
                    "kind": t.kind,
                    "pid": t.proc.pid if t.proc else None,
                    "trigger": t.trigger,
                    "started_at": _utc(t.started_wall),
                }
                for t in self.running.values()
            },
            queued=[{"job": t.job, "kind": t.kind, "trigger": t.trigger} for t in self.queue],
            next_fire={f"{e.job}:{e.kind}": e.next_fire.strftime("%Y-%m-%dT%H:%M:%SZ") for e in self.entries.values()},
            started=self.snapshot.started,
        )
        text = self._status_line()
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def _ping_watchdog(self, mono: float) -> None:
        if self.notifier.watchdog_interval and mono >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = mono + self.notifier.watchdog_interval

    # ------------------------------------------------------------ HTTP

    def _start_http(self) -> None:
        host, _, port = self.config.settings.http.listen.rpartition(":")
        host = host.strip("[]")
        server = _Server((host, int(port)), _Handler)
        server.daemon_ref = self
        self.http = server
        self.events.event("http_listening", address=f"{host}:{server.server_address[1]}")
        threading.Thread(target=_serve, args=(server,), name="backupd-http", daemon=True).start()

    def healthy(self) -> bool:
        return time.monotonic() - self.snapshot.heartbeat < HEALTH_STALE

    def jobs_json(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        queued = {q["job"] for q in snap.queued}
        out = []
        for st in all_status(self.config):
            d = st.to_json()
            d["running"] = st.job in snap.running or d["running"]
            d["run"] = snap.running.get(st.job)
            d["queued"] = st.job in queued
            out.append(d)
        return out

    def page(self) -> str | None:
        mode = self.config.settings.http.status_page
        if mode == "off":
            return None
        snap = self.snapshot
        jobs = all_status(self.config)
        for st in jobs:
            st.running = st.running or st.job in snap.running
        notify = notify_status(self.config) if mode == "full" else None
        return render_page(jobs, mode, socket.gethostname(), notify)

    def metric_extras(self) -> dict[str, float]:
        snap = self.snapshot
        return {
            "backupd_daemon_running_children": float(len(snap.running)),
            "backupd_daemon_queued_runs": float(len(snap.queued)),
            "backupd_daemon_start_time_seconds": snap.started,
            "backupd_daemon_heartbeat_age_seconds": max(0.0, time.monotonic() - snap.heartbeat),
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    daemon_ref: Daemon


def _serve(server: _Server) -> None:
    """Block in the selector until a request arrives: serve_forever would wake twice a second."""
    server.timeout = None
    while True:
        server.handle_request()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _registry: Any = None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every 15 s would drown the run events

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _page(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        for header, value in (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            # self-contained by design: nothing to load, nothing to run, no framing
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
                                        " frame-ancestors 'none'"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ):
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, value: object) -> None:
        self._send(code, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), "application/json")

    def do_GET(self) -> None:
        daemon = self.server.daemon_ref
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/":
                page = daemon.page()
                if page is None:
                    self._json(404, {"error": "the status page is off ([http] status_page)"})
                else:
                    self._page(page)
            elif path == "/health":
                ok = daemon.healthy()
                age = round(time.monotonic() - daemon.snapshot.heartbeat, 3)
                self._json(
                    200 if ok else 503,
                    {"status": "ok" if ok else "stale", "heartbeat_age_seconds": age, "stopping": daemon.stopping},
                )
            elif path == "/health/jobs":
                self._json(200, daemon.jobs_json())
            elif path == "/metrics":
                if _Handler._registry is None:
                    _Handler._registry = make_registry(lambda: daemon.config, daemon.metric_extras)
                body, ctype = render(_Handler._registry)
                self._send(200, body, ctype)
            else:
                self._json(404, {"error": "not found", "paths": ["/", "/health", "/health/jobs", "/metrics"]})
        except Exception as exc:  # a broken scrape must not kill the thread
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})


def upcoming(config: Config, job: str | None, count: int, after: datetime) -> list[dict[str, Any]]:
    """`backupd next`: the next `count` fire times per job (and per drill schedule), UTC datetimes."""
    names = [job] if job else sorted(n for n, j in config.jobs.items() if j.enabled)
    out: list[dict[str, Any]] = []
    for name in names:
        j = config.job(name)
        tz = config.job_timezone(name)
        for kind, expr in (("backup", j.schedule), ("drill", j.drill_schedule)):
            if not expr:
                continue
            sched = Schedule.parse(expr, tz)
            out.append(
                {
                    "job": name,
                    "kind": kind,
                    "schedule": expr,
                    "timezone": tz,
                    "enabled": j.enabled,
                    "zone": sched.zone,
                    "times": sched.iter_after(after, count) if j.enabled else [],
                }
            )
    return out


def run_daemon(config: Config) -> int:
    events = EventLog(config.settings.logging.format, level=config.settings.logging.level)
    return Daemon(config, events).run()
