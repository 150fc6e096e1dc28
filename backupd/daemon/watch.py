"""The notification checks that no run makes: overdue jobs, backups lagging behind in S3, a store short of
space; and the outbox's retries. The daemon runs them in a thread of their own every minute (so a slow
channel never holds up the scheduler loop); in timer mode `backupd status --notify` runs them once, from
`systemd/backupd-notify.timer`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from backupd.daemon.status import all_status
from backupd.logs import EventLog
from backupd.notify import report
from backupd.notify.deliver import retry_outbox
from backupd.notify.message import Message
from backupd.settings import Config
from backupd.store.catalog import Catalog

INTERVAL = float(os.environ.get("BACKUPD_NOTIFY_INTERVAL", "60"))


def check_all(config: Config, events: EventLog, catalog: Catalog | None = None) -> tuple[int, int]:
    """Every check once, then the outbox; returns the outbox's (delivered, failed)."""
    own = catalog is None
    cat = catalog or Catalog(config.state_dir)
    try:
        for st in all_status(config, datetime.now(UTC)):
            if not st.enabled:
                continue
            due = st.due_since.strftime("%Y-%m-%d %H:%M UTC") if st.due_since else None
            report.check_overdue(config, cat, events, st.job, st.overdue and not st.running, due)
            report.check_s3_lag(config, cat, events, st.job)
            report.check_low_space(config, cat, events, st.job, st.last_backup_bytes)
        return retry_outbox(config, cat, events)
    finally:
        if own:
            cat.close()


class Watcher:
    """The daemon's notification thread: the checks every INTERVAL, and messages the loop hands over."""

    def __init__(self, config: Callable[[], Config], events: EventLog) -> None:
        self._config = config
        self._events = events
        self._inbox: queue.Queue[Message | str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="backupd-notify", daemon=True)

    def start(self) -> None:
        self._inbox.put("check")  # the first checks right away, not a minute after the start
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)

    def failure(self, job: str, step: str, error: str, event: str = "failure") -> None:
        """A run or drill the daemon had to stop or that was killed cannot say so itself."""
        self._inbox.put(Message(event, job=job, step=step, error=error))

    def _loop(self) -> None:
        catalog: Catalog | None = None
        while True:
            try:
                msg = self._inbox.get(timeout=INTERVAL)
            except queue.Empty:
                msg = "check"
            if msg is None:
                break
            try:
                config = self._config()
                catalog = catalog or Catalog(config.state_dir)
                if isinstance(msg, Message) and msg.event == "drill_failure":
                    report.drill_finished(config, catalog, self._events, msg.job or "", None, False, msg.error, None)
                elif isinstance(msg, Message):
                    report.run_failed(config, catalog, self._events, msg.job or "", msg.step, msg.error or "")
                else:
                    check_all(config, self._events, catalog)
            except Exception as exc:  # never takes the daemon down; tried again next interval
                self._events.event("warning", step="notify", error=f"notification check: {type(exc).__name__}: {exc}")
                if catalog is not None:
                    catalog.close()
                catalog = None
        if catalog is not None:
            catalog.close()
