"""Per-job status from the config and the catalog: one computation shared by `backupd status`,
the daemon's /health/jobs and /metrics, so the three can never disagree about "overdue".

Overdue: the latest fire time older than ``now - grace`` has no successful run started at or after it.
The grace covers a run that started on time and is still legitimately working: at least 15 minutes,
up to the job's timeout, but never more than one schedule interval (a run that outlives its interval
would be coalesced with the next fire anyway), plus the scheduler's jitter.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backupd.actions.stream import stream_status
from backupd.schedule import Schedule
from backupd.settings import Config
from backupd.store.backups import Store
from backupd.store.catalog import Catalog

MIN_GRACE = timedelta(minutes=15)


def parse_ts(value: str | None) -> datetime | None:
    """Catalog timestamps are ISO 8601 UTC with a Z; None stays None."""
    if not value:
        return None
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def grace_for(sched: Schedule, timeout_s: int, jitter_s: int, now: datetime) -> timedelta:
    interval = sched.interval_hint(now)
    return max(MIN_GRACE, min(timedelta(seconds=timeout_s), interval)) + timedelta(seconds=jitter_s)


@dataclass
class JobStatus:
    job: str
    type: str
    enabled: bool
    schedule: str
    timezone: str
    overdue: bool = False
    due_since: datetime | None = None  # the fire time a backup is missing for, when overdue
    grace_seconds: float = 0.0
    next_run: datetime | None = None
    running: bool = False
    last_success_at: datetime | None = None
    last_success_age_seconds: float | None = None
    last_backup_id: str | None = None
    last_backup_bytes: int | None = None
    last_backup_warnings: list[str] = field(default_factory=list)  # e.g. content the backup does not hold
    last_success_duration: float | None = None
    last_run_at: datetime | None = None
    last_run_outcome: str | None = None
    last_run_trigger: str | None = None
    last_run_error: str | None = None
    last_run_step: str | None = None
    last_run_duration: float | None = None
    drill_schedule: str | None = None
    next_drill: datetime | None = None
    last_drill_at: datetime | None = None
    last_drill_outcome: str | None = None
    last_drill_error: str | None = None
    last_drill_duration: float | None = None
    last_drill_success_at: datetime | None = None
    last_drill_restore_seconds: float | None = None
    runs_total: dict[str, int] = field(default_factory=dict)
    recent_sizes: list[int] = field(default_factory=list)  # stored bytes of the last backups, oldest first
    last_verify_success_at: datetime | None = None  # the last good re-verification of a backup of the job
    oldest_proven_at: datetime | None = None  # the oldest "last verified" (or commit) among its kept backups
    oldest_unverified_age_seconds: float | None = None
    verify_failures: dict[str, int] = field(default_factory=dict)  # copy (local, s3) -> failed verifications
    next_verify: datetime | None = None
    s3_read_cycles: int | None = None  # scheduled verifications it takes to have re-read every S3 copy
    kept_backups: int = 0
    drill_cycle_seconds: float | None = None  # rotating drills: how long until every kept backup was drilled
    s3_enabled: bool = False
    s3_pending: int | None = None  # backups owed to S3 (pending or failed copies)
    s3_last_copy_at: datetime | None = None
    s3_error: str | None = None  # the last failed copy's error, while one is owed
    failing_since: datetime | None = None  # from the notification state: when the failures began
    stream: dict[str, Any] | None = None  # PITR jobs: the stream's lag, committed position, gaps (docs/pitr.md)

    @property
    def state(self) -> str:
        """ok | failing | overdue | never run | disabled: the one word the status page shows."""
        if not self.enabled:
            return "disabled"
        if self.last_run_outcome == "failed":
            return "failing"
        if self.overdue:
            return "overdue"
        if self.last_success_at is None:
            return "never run"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return out


def _pid_alive(pid: int | None) -> bool:
    """Signal 0 only checks existence: a 'running' row whose process is gone was killed."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _duration(row: sqlite3.Row) -> float | None:
    if row["duration"] is not None:
        return float(row["duration"])
    start, end = parse_ts(row["started_at"]), parse_ts(row["finished_at"])
    return (end - start).total_seconds() if start and end else None


def job_status(config: Config, catalog: Catalog, name: str, now: datetime) -> JobStatus:
    job = config.jobs[name]
    tz = config.job_timezone(name)
    sched = Schedule.parse(job.schedule, tz)
    st = JobStatus(job=name, type=job.type, enabled=job.enabled, schedule=job.schedule, timezone=tz)
    db = catalog.db

    ok = catalog.last_success(name)
    if ok is not None:
        st.last_success_at = parse_ts(ok["started_at"])
        st.last_backup_id = ok["backup_id"]
        st.last_backup_bytes = ok["bytes"]
        st.last_success_duration = _duration(ok)
        row = catalog.backup(name, ok["backup_id"]) if ok["backup_id"] else None
        if row is not None and row["manifest"]:
            st.last_backup_warnings = list(json.loads(row["manifest"]).get("warnings", []))
        if st.last_success_at is not None:
            st.last_success_age_seconds = max(0.0, (now - st.last_success_at).total_seconds())
    last = catalog.last_run(name)
    if last is not None:
        st.last_run_at = parse_ts(last["started_at"])
        st.last_run_outcome = last["outcome"]
        st.last_run_trigger = last["trigger"]
        st.last_run_error = last["error"]
        st.last_run_step = last["step"]
        st.last_run_duration = _duration(last)
    st.running = any(
        _pid_alive(r["pid"]) for r in db.execute("SELECT pid FROM runs WHERE job=? AND outcome='running'", (name,))
    )
    st.runs_total = {
        r[0]: int(r[1])
        for r in db.execute(
            "SELECT outcome, COUNT(*) FROM runs WHERE job=? AND outcome != 'running' GROUP BY outcome", (name,)
        )
    }

    drill = catalog.last_drill(name)
    if drill is not None:
        st.last_drill_at = parse_ts(drill["started_at"])
        st.last_drill_outcome = drill["outcome"]
        st.last_drill_error = drill["error"]
        start, end = parse_ts(drill["started_at"]), parse_ts(drill["finished_at"])
        st.last_drill_duration = (end - start).total_seconds() if start and end else None
        st.last_drill_restore_seconds = drill["restore_seconds"]
    good = db.execute(
        "SELECT started_at FROM drills WHERE job=? AND outcome='ok' ORDER BY id DESC LIMIT 1", (name,)
    ).fetchone()
    if good is not None:
        st.last_drill_success_at = parse_ts(good[0])

    st.recent_sizes = [
        int(r[0]) for r in db.execute(
            "SELECT bytes FROM (SELECT bytes, backup_id FROM backups WHERE job=? AND deleted_at IS NULL"
            " ORDER BY backup_id DESC LIMIT 20) ORDER BY backup_id", (name,)
        )
    ]
    proof = catalog.verification_summary(name)
    st.last_verify_success_at = parse_ts(proof["last_ok"])
    st.oldest_proven_at = parse_ts(proof["oldest_proven"])
    if st.oldest_proven_at is not None:
        st.oldest_unverified_age_seconds = max(0.0, (now - st.oldest_proven_at).total_seconds())
    st.verify_failures = proof["failures"]
    st.kept_backups = int(db.execute(
        "SELECT COUNT(*) FROM backups WHERE job=? AND deleted_at IS NULL AND verified=1", (name,)
    ).fetchone()[0])
    verify_expr = config.settings.scheduler.verify_schedule
    if verify_expr and job.enabled:
        st.next_verify = Schedule.parse(verify_expr, config.settings.scheduler.timezone).next_after(now)
    fraction = config.settings.s3.verify_read_fraction
    if config.settings.s3.enabled and fraction > 0:
        st.s3_read_cycles = math.ceil(1 / fraction)
    if job.drill_schedule:
        st.drill_cycle_seconds = drill_cycle(Schedule.parse(job.drill_schedule, tz), now, st.kept_backups,
                                             job.drill_pick)
    if config.settings.s3.enabled:
        st.s3_enabled = True
        owed = db.execute(
            "SELECT COUNT(*), MAX(CASE WHEN s3_state='failed' THEN s3_error END) FROM backups WHERE job=?"
            " AND s3_state IN ('pending', 'failed') AND deleted_at IS NULL", (name,)
        ).fetchone()
        st.s3_pending, st.s3_error = int(owed[0]), owed[1]
        copied = db.execute(
            "SELECT MAX(s3_checked_at) FROM backups WHERE job=? AND s3_state='copied'", (name,)
        ).fetchone()
        st.s3_last_copy_at = parse_ts(copied[0])
    failing = catalog.notify_state(name, "failure")
    if failing is not None and st.last_run_outcome == "failed":
        st.failing_since = parse_ts(failing["since"])

    if job.enabled:
        st.next_run = sched.next_after(now)
        grace = grace_for(sched, job.timeout, config.settings.scheduler.jitter, now)
        st.grace_seconds = grace.total_seconds()
        st.overdue = sched.is_overdue(st.last_success_at, now, grace)
        if st.overdue:
            st.due_since = sched.latest_at_or_before(now - grace)
        if job.drill_schedule:
            st.drill_schedule = job.drill_schedule
            st.next_drill = Schedule.parse(job.drill_schedule, tz).next_after(now)
    st.stream = stream_status(config, name)
    return st


def drill_cycle(sched: Schedule, now: datetime, kept: int, pick: str) -> float | None:
    """Seconds until every kept backup has been drilled once: rotating drills alternate the newest with one
    older backup, so the `kept - 1` older ones take two drill periods each (newest-only drills: one period)."""
    first = sched.next_after(now)
    period = (sched.next_after(first) - first).total_seconds()
    if pick != "rotate" or kept <= 1:
        return period
    return period * 2 * (kept - 1)


def all_status(config: Config, now: datetime | None = None, *, reconcile: bool = False) -> list[JobStatus]:
    """Every configured job, sorted by name; opens and closes its own catalog connection.

    `reconcile` (the `status` command) first gives committed backups without a catalog row their row; the
    daemon's frequent calls skip that store scan."""
    now = now or datetime.now(UTC)
    catalog = Catalog(config.state_dir)
    try:
        if reconcile:
            store = Store(config.store_root)
            for name in sorted(config.jobs):
                catalog.reconcile(store, name, config.settings.s3.enabled)
        return [job_status(config, catalog, name, now) for name in sorted(config.jobs)]
    finally:
        catalog.close()


@dataclass
class NotifyStatus:
    """The outbox: messages waiting for a retry and those given up, by channel kind."""

    pending: dict[str, int] = field(default_factory=dict)
    undeliverable: dict[str, int] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)  # one line per message given up, newest first


def notify_status(config: Config) -> NotifyStatus:
    catalog = Catalog(config.state_dir)
    try:
        out = NotifyStatus()
        for (kind, state), n in catalog.outbox_counts().items():
            if state == "pending":
                out.pending[kind] = n
            elif state == "undeliverable":
                out.undeliverable[kind] = n
        for r in catalog.outbox_undeliverable(5):
            who = f" of job {r['job']}" if r["job"] else ""
            out.recent.append(
                f"{r['event']}{who} ({r['created_at'][:19].replace('T', ' ')} UTC) via {r['channel'].split(':')[0]}:"
                f" {r['last_error']}"
            )
        return out
    finally:
        catalog.close()
