"""From outcomes to notifications: one per state change. A job that keeps failing (or stays overdue, or
its store stays short of space) is reported when the state begins, again at most every `repeat`, and its
end (the first good run after failures) is `recovered`. The states live in the catalog (`notify_state`),
so separate processes (every run is one) agree on what was already said.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

from backupd.logs import EventLog
from backupd.notify.deliver import notify
from backupd.notify.message import Message
from backupd.settings import Config
from backupd.store.catalog import Catalog

# states a message's event stands for, and the event their end sends (None: the end is silent)
RECOVERY = {"failure": "recovered"}


def _age(ts: str) -> float:
    dt = datetime.fromisoformat(ts)
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return (datetime.now(UTC) - dt).total_seconds()


def report_state(config: Config, catalog: Catalog, events: EventLog, msg: Message, active: bool) -> bool:
    """Enter, keep or leave the state `msg.event` of `msg.job`; True when a message was sent."""
    try:
        kind, job = msg.event, msg.job or ""
        cfg = config.notify_for(msg.job)
        row = catalog.notify_state(job, kind)
        if active:
            due = row is None or _age(row["last_sent"]) >= cfg.repeat
            catalog.set_notify_state(job, kind, sent=due, detail=msg.error)
            if due:
                if row is not None:
                    msg.details.setdefault("since", row["since"])
                notify(config, catalog, events, msg)
            return due
        if row is None or not catalog.clear_notify_state(job, kind):
            return False
        follow = RECOVERY.get(kind)
        if follow is None:
            return False
        notify(config, catalog, events, Message(follow, job=msg.job, backup_id=msg.backup_id,
                                                details={"failing_since": row["since"]}))
        return True
    except Exception as exc:  # the catalog is locked or gone: said, never raised into a run
        events.event("warning", step="notify", error=f"notification state {msg.event}: {type(exc).__name__}: {exc}")
        return False


# ------------------------------------------------------------------ runs


def run_started(config: Config, catalog: Catalog, events: EventLog, job: str) -> None:
    notify(config, catalog, events, Message("start", job=job, stage="start", log_tail="\n".join(events.tail)))


def run_failed(config: Config, catalog: Catalog, events: EventLog, job: str, step: str | None, error: str) -> None:
    tail = "\n".join(events.tail)
    report_state(config, catalog, events, Message("failure", job=job, step=step, error=error), active=True)
    notify(config, catalog, events, Message("failure", job=job, step=step, error=error, stage="fail", log_tail=tail))


def run_succeeded(
    config: Config, catalog: Catalog, events: EventLog, job: str, backup_id: str, nbytes: int,
    s3_error: str | None,
) -> None:
    report_state(config, catalog, events, Message("failure", job=job, backup_id=backup_id), active=False)
    notify(config, catalog, events, Message("success", job=job, backup_id=backup_id, details={"bytes": nbytes}))
    if config.settings.s3.enabled:
        s3 = Message("s3_failure", job=job, backup_id=backup_id, step="s3", error=s3_error)
        report_state(config, catalog, events, s3, active=s3_error is not None)
    check_low_space(config, catalog, events, job, nbytes)
    check_s3_lag(config, catalog, events, job)
    tail = "\n".join(events.tail)
    notify(config, catalog, events, Message("success", job=job, backup_id=backup_id, stage="success", log_tail=tail))


def drill_finished(
    config: Config, catalog: Catalog, events: EventLog, job: str, backup_id: str | None, ok: bool,
    error: str | None, check: str | None,
) -> None:
    msg = Message("drill_failure", job=job, backup_id=backup_id, step="drill", error=error,
                  details={"check": check} if check else {})
    report_state(config, catalog, events, msg, active=not ok)


def verify_finished(
    config: Config, catalog: Catalog, events: EventLog, job: str, bad: list[tuple[str, str, str]]
) -> None:
    """A scheduled re-verification of `job` ended: `bad` is (backup id, copy, first problem) of what it found
    bad. Reported when it starts finding bad copies, then at most every `repeat`, and when all are good."""
    first = bad[0] if bad else None
    msg = Message("verify_failure", job=job, backup_id=first[0] if first else None, step="verify",
                  error=f"{first[1]} copy: {first[2]}" if first else None,
                  details={"bad": [f"{b}/{c}" for b, c, _ in bad[:20]]} if bad else {})
    report_state(config, catalog, events, msg, active=bool(bad))


# ------------------------------------------------------------------ states checked from outside a run


def check_low_space(config: Config, catalog: Catalog, events: EventLog, job: str, nbytes: int | None) -> None:
    """The store's filesystem will not hold the next backup: free < last backup's size x margin."""
    if not nbytes:
        return
    try:
        free = shutil.disk_usage(config.store_root).free
    except OSError:
        return
    margin = config.notify_for(job).low_space_margin
    need = int(nbytes * margin)
    msg = Message("low_space", job=job, step="store",
                  error=f"{free} bytes free on the store's filesystem, the next backup needs about {need}",
                  details={"free_bytes": free, "needed_bytes": need, "store": str(config.store_root)})
    report_state(config, catalog, events, msg, active=free < need)


def check_s3_lag(config: Config, catalog: Catalog, events: EventLog, job: str) -> None:
    """A committed backup still not in S3 after `s3_lag`."""
    if not config.settings.s3.enabled:
        return
    lag = config.notify_for(job).s3_lag
    row = catalog.db.execute(
        "SELECT backup_id, finished_at, s3_error FROM backups WHERE job=? AND s3_state IN ('pending', 'failed')"
        " AND deleted_at IS NULL ORDER BY backup_id LIMIT 1", (job,)
    ).fetchone()
    late = row is not None and row["finished_at"] and _age(row["finished_at"]) >= lag
    msg = Message("s3_lag", job=job, step="s3", backup_id=row["backup_id"] if row else None,
                  error=(f"backup {row['backup_id']} is not in S3 {_age(row['finished_at']) / 3600:.1f}h after it was"
                         f" committed" + (f": {row['s3_error']}" if row["s3_error"] else "")) if late else None)
    report_state(config, catalog, events, msg, active=bool(late))


def check_overdue(
    config: Config, catalog: Catalog, events: EventLog, job: str, overdue: bool, due_since: str | None
) -> None:
    msg = Message("overdue", job=job, step="schedule",
                  error=f"no successful backup since the run due at {due_since}" if overdue else None)
    report_state(config, catalog, events, msg, active=overdue)
