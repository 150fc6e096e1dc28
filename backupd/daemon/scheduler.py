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
import os
import selectors
import signal
import time
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from types import FrameType

from backupd.actions.stream import pitr_jobs
from backupd.config import load_config
from backupd.daemon.plan import Entry, Planning, upcoming
from backupd.daemon.runs import STOP_GRACE, Kind, Task
from backupd.daemon.sdnotify import Notifier, child_environ
from backupd.daemon.streams import StreamSupervisor
from backupd.daemon.watch import Watcher
from backupd.daemon.web import HEARTBEAT, Snapshot, StatusServing
from backupd.errors import EXIT_OK, BackupdError
from backupd.logs import EventLog
from backupd.settings import Config
from backupd.store.catalog import Catalog

__all__ = ["Daemon", "run_daemon", "upcoming"]  # `upcoming` (backupd next) lives in plan.py
CLOCK_JUMP = 30.0  # wall clock moved this much more (or less) than the monotonic clock: a suspend or a step


class Daemon(Planning, StatusServing):
    """The loop: schedules (`Planning`), runs (`runs.Runs`), what it shows (`StatusServing`), and signals."""

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

    # ------------------------------------------------------------ reload, watchdog

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

    def _ping_watchdog(self, mono: float) -> None:
        if self.notifier.watchdog_interval and mono >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = mono + self.notifier.watchdog_interval


def run_daemon(config: Config) -> int:
    events = EventLog(config.settings.logging.format, level=config.settings.logging.level)
    return Daemon(config, events).run()
