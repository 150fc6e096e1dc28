"""`backupd stream JOB`: archive the job's log continuously, in the foreground, under its own lock.

The lock is `JOB.stream` (store/locks.py), not the job's run lock, so scheduled dumps of the job still run
while it streams. SIGTERM/SIGINT/SIGHUP set the stop flag: the source commits its open segment and returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from backupd.errors import LockedError, UsageError
from backupd.logs import EventLog
from backupd.settings import Config
from backupd.sources import source_for
from backupd.sources.base import PointInTime, StreamContext
from backupd.store.locks import job_lock
from backupd.store.segment_ship import SegmentShipper, pending_count
from backupd.store.segments import SegmentStore
from backupd.store.stream_state import lag_seconds, read_state, stream_lock_name, stream_running


def pitr_jobs(config: Config) -> list[str]:
    """Enabled jobs whose source streams a log and has it switched on: one stream each."""
    out = []
    for name, job in sorted(config.jobs.items()):
        source = source_for(job)
        if job.enabled and isinstance(source, PointInTime) and source.pitr_enabled(job):
            out.append(name)
    return out


def check_pitr(config: Config, name: str) -> list[str]:
    """`check-config --connect` for a PITR job: the server's side (no lines for other jobs)."""
    job = config.job(name)
    source = source_for(job)
    if isinstance(source, PointInTime) and source.pitr_enabled(job):
        return source.check_pitr(job)
    return []


def stream_status(config: Config, name: str) -> dict[str, Any] | None:
    """What `status`, the status page and `/metrics` show of a PITR job's stream; None for other jobs."""
    job = config.jobs[name]
    source = source_for(job)
    if not isinstance(source, PointInTime) or not source.pitr_enabled(job):
        return None
    state = read_state(config.state_dir, name)
    running = stream_running(config.state_dir, name)
    st = state or {}
    return {
        "running": running,
        "lag_seconds": lag_seconds(state, running),
        "committed": st.get("committed"),
        "committed_at": st.get("committed_at"),
        "server": st.get("server"),
        "gaps": int(st.get("gaps", 0)),
        "last_gap": st.get("last_gap"),
        "s3_pending": pending_count(config, name) if config.settings.s3.enabled else None,
    }


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """A stop flag set by SIGTERM, SIGINT or SIGHUP (main thread only), handlers restored afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _notify_gap(config: Config, events: EventLog, job: str, reason: str, details: dict[str, Any]) -> None:
    """The `pitr_gap` notification (through the job's channels, the outbox retries it)."""
    from backupd.notify.deliver import notify
    from backupd.notify.message import Message
    from backupd.store.catalog import Catalog

    catalog = Catalog(config.state_dir)
    try:
        notify(config, catalog, events, Message("pitr_gap", job=job, step="stream", error=reason, details=details))
    finally:
        catalog.close()


def stream_job(config: Config, name: str, stop: threading.Event, events: EventLog) -> None:
    """Hold `JOB.stream` and stream until `stop` is set; LockedError (exit 75) when one already runs."""
    job = config.job(name)
    source = source_for(job)
    if not isinstance(source, PointInTime) or not source.pitr_enabled(job):
        raise UsageError(f"stream: job {name} does not stream a log (set [pitr] enabled = true; docs/pitr.md)")
    try:
        lock = job_lock(config.state_dir, stream_lock_name(name))
        lock.__enter__()
    except LockedError as exc:
        raise LockedError(f"stream: {exc}") from None
    try:
        ctx = StreamContext(
            job_name=name,
            segments=SegmentStore(config.store_root, name),
            state_dir=config.state_dir,
            tmp_dir=config.state_dir / "tmp",
            compression=job.compression or config.settings.compression,
            events=events,
            stop=stop,
            recipients=config.recipients_for(name),
            on_gap=lambda reason, details: _notify_gap(config, events, name, reason, details),
        )
        shipper = SegmentShipper(config, name, events) if config.settings.s3.enabled else None
        if shipper is not None:
            ctx.on_commit = lambda seg: shipper.wake()
            shipper.start()
        events.event("pitr_stream_started", job=name)
        try:
            source.stream(job, ctx)
        finally:
            if shipper is not None:
                shipper.stop()
        events.event("pitr_stream_stopped", job=name)
    finally:
        lock.__exit__(None, None, None)
