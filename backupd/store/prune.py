"""Apply the retention policy (backupd.retention.plan) to the local store, the catalog and the S3 copies.

Locally the store decides what exists (the same directories `list` shows) and the catalog supplies what a
directory cannot say cheaply (verified after a re-check, S3 state). Deletion is store first (rename to a
`.partial-` name, then remove), catalog second: a prune killed in between leaves a catalog row for a backup
that is gone, which the next prune (holding the job's lock) marks deleted. Never the other way round.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from backupd.errors import BackupdError
from backupd.fsutil import ensure_private_dir
from backupd.logs import EventLog
from backupd.settings import Config, KeepCfg
from backupd.store.backups import MANIFEST, Store, StoredBackup, read_verdict
from backupd.store.catalog import Catalog
from backupd.store.locks import job_lock
from backupd.store.pitr import Base, pruning_segments, window_keep
from backupd.store.pitr import iso as utc_second
from backupd.store.retention import Backup, Decision, Policy, plan
from backupd.store.s3 import Bucket, S3Error, error_text
from backupd.store.s3_lock import iso
from backupd.store.s3_segments import (
    delete_segment,
    list_segments,
    read_remote_manifest,
    segment_locked_until,
    segment_prefix,
)
from backupd.store.segments import BinlogPos, Segment, SegmentStore, parse_time

MISSING = "missing from the store (earlier prune interrupted)"
_ID_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


def backup_time(backup_id: str) -> datetime | None:
    """The UTC time in a backup id, or None; 10x faster than strptime, which matters on 100k backups."""
    m = _ID_RE.fullmatch(backup_id)
    if m is None:
        return None
    try:
        y, mo, d, h, mi, sec = map(int, m.groups())
        return datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError:
        return None


@dataclass
class PruneRow:
    """One line of the prune table: where the backup is, what happens to it and why."""

    job: str
    backup_id: str
    where: str  # local | s3
    keep: bool
    reasons: list[str]
    done: bool = False  # deleted for real (False on --dry-run and for kept backups)
    error: str | None = None
    locked_until: str | None = None  # an S3 copy whose Object Lock has not expired: deleted after this time
    warning: str | None = None  # S3 refused the deletion (AccessDenied): kept, tried again by the next prune

    @property
    def action(self) -> str:
        if self.keep:
            return "keep"
        if self.error:
            return "FAILED"
        if self.locked_until:
            return "locked"
        if self.warning:
            return "refused"
        return "deleted" if self.done else "delete"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "action": self.action}


def policy_of(keep: KeepCfg) -> Policy:
    return Policy(**keep.model_dump())


def _local_dirs(store: Store, job: str) -> dict[str, datetime]:
    """Committed backup ids of a job and their times, from the directory names (no manifest reads)."""
    d = store.job_dir(job)
    if not d.is_dir():
        return {}
    out = {}
    with os.scandir(d) as it:
        for e in it:
            t = backup_time(e.name)
            if t is not None and e.is_dir(follow_symlinks=False):
                out[e.name] = t
    return out


def _read_verified(store: Store, job: str, backup_id: str) -> bool | None:
    """Verified at commit and by the last recorded verification; None when the manifest cannot be read (then
    the backup is never deleted)."""
    path = store.job_dir(job) / backup_id
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return StoredBackup(job, backup_id, path, manifest, read_verdict(path)).verified


def local_decisions(
    config: Config, store: Store, catalog: Catalog, job: str, now: datetime | None = None
) -> list[Decision]:
    """Decisions for every backup directory of `job`, newest first (pure apart from reading state)."""
    now = now or datetime.now(UTC)
    rows = catalog.retention_rows(job)
    s3_on = config.settings.s3.enabled
    backups = []
    for bid, when in _local_dirs(store, job).items():
        row = rows.get(bid)
        flag = _read_verified(store, job, bid)  # None: the manifest is unreadable, so it is never verified
        if row is not None:
            verified, s3_state = row
            verified = bool(verified) and bool(flag)
            committed = True
        else:  # not catalogued (yet): trust only a readable manifest
            committed, verified, s3_state = flag is not None, bool(flag), "none"
        in_s3 = s3_state in ("copied", "pruned")
        # state "none": made while S3 was off, so never queued for a copy; it must not be kept forever
        needs_s3 = s3_on and s3_state != "none"
        backups.append(Backup(bid, when, committed, verified, needs_s3, in_s3))
    decisions = plan(backups, policy_of(config.retention.local_for(job)), now, config.job_timezone(job))
    window = config.pitr_windows.get(job)
    if window is None:
        return decisions
    kept, _, anchor = _window_plan(store, job, window, now)
    if anchor is None:
        return decisions
    reason = f"pitr window {_span(window)}: base of instants since {utc_second(anchor.taken)}"
    return [Decision(d.backup_id, True, (*d.reasons, reason) if d.keep else (reason,)) if d.backup_id in kept else d
            for d in decisions]


def _span(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


def _window_plan(store: Store, job: str, window: float, now: datetime) -> tuple[set[str], list[Segment], Base | None]:
    return window_keep(store.backups(job), SegmentStore(store.root, job).segments(), window, now)


def prune_segments(
    config: Config, store: Store, job: str, events: EventLog, *, dry_run: bool = False, now: datetime | None = None
) -> list[PruneRow]:
    """Retention by window for a PITR job's local segments: every segment a restore to an instant inside the
    window needs is kept (from the position of the base that instant needs on); older ones are deleted."""
    window = config.pitr_windows.get(job)
    if window is None:
        return []
    now = now or datetime.now(UTC)
    segments = SegmentStore(store.root, job)
    _, prune, anchor = _window_plan(store, job, window, now)
    if anchor is None:
        return []
    gone = {s.seq for s in prune}
    s3_on = config.settings.s3.enabled
    rows = []
    with pruning_segments(segments) as free:
        for seg in segments.segments():
            if seg.seq not in gone:
                continue
            why = f"ends at {seg.end}, before {anchor.pos} where base {anchor.backup.backup_id} starts the window"
            if s3_on and seg.s3_record() is None:  # a pending copy keeps it: the bucket may need it later
                rows.append(PruneRow(job, f"segment {seg.seq:08d}", "binlog", True, [why, "not copied to S3 yet"]))
                continue
            if not free and not dry_run:
                rows.append(PruneRow(job, f"segment {seg.seq:08d}", "binlog", True,
                                     [why, "in use by a restore or drill: pruned next time"]))
                continue
            row = PruneRow(job, f"segment {seg.seq:08d}", "binlog", False, [why])
            rows.append(row)
            if dry_run:
                continue
            try:
                segments.delete(seg)
            except OSError as exc:
                row.error = f"{exc.strerror or exc} ({seg.path})"
                continue
            row.done = True
            events.event("pruned", job=job, step="prune", segment=seg.seq, where="binlog")
    return rows


def prune_local(
    config: Config,
    store: Store,
    catalog: Catalog,
    job: str,
    events: EventLog,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[PruneRow]:
    """Plan and (unless dry_run) delete. The caller holds the job's lock when not a dry run."""
    if not dry_run:
        store.sweep_partials(job)  # tombstones of an interrupted delete, partials of a killed run
        n = catalog.mark_missing_deleted(job, set(_local_dirs(store, job)), MISSING)
        if n:
            events.event("reconciled", job=job, step="prune", rows=n, reason=MISSING)
    rows = []
    decisions = local_decisions(config, store, catalog, job, now)
    for d in decisions:
        row = PruneRow(job, d.backup_id, "local", d.keep, list(d.reasons))
        rows.append(row)
        if d.keep or dry_run:
            continue
        path = store.job_dir(job) / d.backup_id
        try:
            store.delete(StoredBackup(job=job, backup_id=d.backup_id, path=path, manifest={}))
        except OSError as exc:
            row.error = f"{exc.strerror or exc} ({path})"
            events.event("warning", job=job, step="prune", backup_id=d.backup_id, error=row.error)
            continue
        catalog.mark_deleted(job, d.backup_id, "; ".join(d.reasons))
        row.done = True
        events.event("pruned", job=job, step="prune", backup_id=d.backup_id, where="local")
    return rows + prune_segments(config, store, job, events, dry_run=dry_run, now=now)


def s3_decisions(
    config: Config, catalog: Catalog, job: str, remote: dict[tuple[str, str], Any], now: datetime | None = None
) -> list[Decision]:
    """Decisions for what is in the bucket for `job` (complete = manifest present; a copy that failed a
    re-check is counted as unverified, so it is kept for an operator to look at, never silently pruned)."""
    now = now or datetime.now(UTC)
    states = catalog.retention_rows(job)
    backups = []
    for (j, bid), rb in remote.items():
        if j != job:
            continue
        verified = rb.complete and states.get(bid, (True, "copied"))[1] != "failed"
        when = backup_time(bid)
        if when is not None:
            backups.append(Backup(bid, when, rb.complete, verified, False, False))
    return plan(backups, policy_of(config.retention.s3_for(job)), now, config.job_timezone(job))


def prune_s3(
    config: Config,
    catalog: Catalog,
    job: str,
    events: EventLog,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    bucket: Any = None,
) -> list[PruneRow]:
    """S3 retention over the bucket's listing (not just what the catalog believes).

    Under Object Lock a copy to delete whose lock (on any version of its objects) runs past `now` is not
    touched: its row says until when, and the first prune after that date deletes it, every version by its
    VersionId. A deletion S3 refuses anyway (AccessDenied) is a warning on the row, never a failure."""
    now = now or datetime.now(UTC)
    bucket = bucket or Bucket(config.settings.s3)
    try:
        remote = bucket.list_backups(job)
    except Exception as exc:
        raise S3Error(f"listing {bucket.url(bucket.key(job, '')[:-1])}: {error_text(exc)}", job=job) from exc
    rows = []
    for d in s3_decisions(config, catalog, job, remote, now):
        row = PruneRow(job, d.backup_id, "s3", d.keep, list(d.reasons))
        rows.append(row)
        if d.keep:
            continue
        try:
            if config.settings.s3.object_lock != "none":
                until = bucket.locked_until(remote[(job, d.backup_id)], now)
                if until is not None:
                    row.locked_until = iso(until)
                    row.reasons.append(f"locked until {row.locked_until}: deleted by the first prune after it")
                    continue
            if dry_run:
                continue
            refused = bucket.delete_backup(remote[(job, d.backup_id)])
        except Exception as exc:
            row.error = error_text(exc) if not isinstance(exc, BackupdError) else str(exc)
            events.event("warning", job=job, step="s3-prune", backup_id=d.backup_id, error=row.error)
            continue
        if refused:
            row.warning = f"{refused[0]}" + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
            events.event("warning", job=job, step="s3-prune", backup_id=d.backup_id, error=row.warning)
            continue
        catalog.set_s3_state(job, d.backup_id, "pruned")
        row.done = True
        events.event("pruned", job=job, step="s3-prune", backup_id=d.backup_id, where="s3")
    if job in config.pitr_windows:
        kept = [r.backup_id for r in rows if r.keep or r.locked_until or r.warning or r.error]  # what stays
        rows += prune_s3_segments(config, catalog, job, events, bucket, kept, dry_run=dry_run, now=now)
    return rows


def _base_position(catalog: Catalog, store: Store, job: str, backup_id: str) -> BinlogPos | bool | None:
    """The oldest binlog position a backup in S3 records (where its roll-forward starts), None when it is not
    a PITR base, False when its manifest is unknown here (then nothing may be pruned)."""
    row = catalog.backup(job, backup_id)
    try:
        manifest = json.loads(row["manifest"]) if row is not None else json.loads(
            (store.job_dir(job) / backup_id / MANIFEST).read_text())
    except (OSError, ValueError, TypeError):
        return False
    found = [BinlogPos(str(a["binlog_position"]["file"]), int(a["binlog_position"]["pos"]))
             for a in manifest.get("artifacts", []) if isinstance(a.get("binlog_position"), dict)]  # fmt: skip
    return min(found, key=lambda p: p.key) if found else None


def prune_s3_segments(
    config: Config, catalog: Catalog, job: str, events: EventLog, bucket: Any, kept: list[str], *,
    dry_run: bool = False, now: datetime | None = None,
) -> list[PruneRow]:  # fmt: skip
    """S3 retention of a PITR job's segments: delete one only when it ends at or before the position of the
    oldest base still in S3 (no kept base rolls forward through it) and its last event is older than the
    window. Object Lock as for backup copies: a live lock plans the deletion, a refusal is a warning.
    Walks from the oldest segment and stops at the first one that stays, so a long S3 history costs one
    manifest read per segment deleted, not per segment kept."""
    now = now or datetime.now(UTC)
    store = Store(config.store_root)
    positions = [_base_position(catalog, store, job, bid) for bid in kept]
    if any(p is False for p in positions):
        return []  # a kept copy we cannot read: keep every segment
    starts = [p for p in positions if isinstance(p, BinlogPos)]
    if not starts:
        return []  # no base in S3 to roll forward from yet: keep them all
    anchor = min(starts, key=lambda p: p.key)
    edge = now - timedelta(seconds=config.pitr_windows[job])
    local = {s.seq: s.manifest for s in SegmentStore(config.store_root, job).segments()}
    try:
        remote = list_segments(bucket, job)
    except Exception as exc:
        raise S3Error(f"listing {bucket.url(segment_prefix(bucket, job))}: {error_text(exc)}", job=job) from exc
    rows = []
    for seq, rs in sorted(remote.items()):
        if not rs.complete:
            continue
        try:
            man = local.get(seq) or read_remote_manifest(bucket, rs)
            end, last = BinlogPos.from_json(man["end"]), parse_time(str(man["last_event_time"]))
        except Exception as exc:
            events.event("warning", job=job, step="s3-prune", segment=seq, error=error_text(exc))
            continue
        if not (end <= anchor and last < edge):
            break  # later segments are later in the log: none of them may go either (and need no GET)
        row = PruneRow(job, f"segment {seq:08d}", "s3", False,
                       [f"ends at {end}, at or before {anchor} where the oldest base in S3 starts, outside the"
                        f" window {_span(config.pitr_windows[job])}"])  # fmt: skip
        rows.append(row)
        try:
            if config.settings.s3.object_lock != "none":
                until = segment_locked_until(bucket, job, seq, now)
                if until is not None:
                    row.locked_until = iso(until)
                    row.reasons.append(f"locked until {row.locked_until}: deleted by the first prune after it")
                    continue
            if dry_run:
                continue
            refused = delete_segment(bucket, job, seq)
        except Exception as exc:
            row.error = error_text(exc) if not isinstance(exc, BackupdError) else str(exc)
            events.event("warning", job=job, step="s3-prune", segment=seq, error=row.error)
            continue
        if refused:
            row.warning = refused[0] + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
            events.event("warning", job=job, step="s3-prune", segment=seq, error=row.warning)
            continue
        row.done = True
        events.event("pruned", job=job, step="s3-prune", segment=seq, where="s3")
    return rows


def prune_jobs(
    config: Config, jobs: list[str], events: EventLog, *, dry_run: bool = False, now: datetime | None = None
) -> tuple[list[PruneRow], list[str]]:
    """`backupd prune`: each job under its lock (a prune never races a run); returns rows and errors.

    A job that is running right now raises LockedError (exit 75) rather than being skipped silently.
    """
    store = Store(config.store_root)
    rows: list[PruneRow] = []
    errors: list[str] = []
    catalog = Catalog(ensure_private_dir(config.state_dir))
    try:
        for job in jobs:
            if dry_run:
                rows += prune_local(config, store, catalog, job, events, dry_run=True, now=now)
                rows += _s3_part(config, catalog, job, events, errors, dry_run=True, now=now)
                continue
            with job_lock(config.state_dir, job):
                rows += prune_local(config, store, catalog, job, events, now=now)
                rows += _s3_part(config, catalog, job, events, errors, dry_run=False, now=now)
    finally:
        catalog.close()
    errors += [f"job {r.job}: prune {r.where} {r.backup_id}: {r.error}" for r in rows if r.error]
    return rows, errors


def _s3_part(
    config: Config,
    catalog: Catalog,
    job: str,
    events: EventLog,
    errors: list[str],
    *,
    dry_run: bool,
    now: datetime | None,
) -> list[PruneRow]:
    if not config.settings.s3.enabled:
        return []
    try:
        return prune_s3(config, catalog, job, events, dry_run=dry_run, now=now)
    except BackupdError as exc:
        errors.append(str(exc))
        return []


def prune_hook(config: Config, name: str, backup: StoredBackup, catalog: Catalog, events: EventLog) -> None:
    """Runner hook: local retention after a successful run (the runner holds the job's lock)."""
    try:
        rows = prune_local(config, Store(config.store_root), catalog, name, events)
    except (OSError, ValueError) as exc:  # never let a hook turn a committed run into a failed one
        raise BackupdError(f"job {name}, step prune: {exc}") from exc
    failed = [r for r in rows if r.error]
    if failed:
        raise BackupdError(f"job {name}, step prune: {failed[0].backup_id}: {failed[0].error}")


def s3_prune_hook(config: Config, name: str, backup: StoredBackup, catalog: Catalog, events: EventLog) -> None:
    """Runner hook: S3 retention after the copy and the local prune."""
    if not config.settings.s3.enabled:
        return
    try:
        rows = prune_s3(config, catalog, name, events)
    except (OSError, ValueError) as exc:
        raise BackupdError(f"job {name}, step s3-prune: {exc}") from exc
    failed = [r for r in rows if r.error]
    if failed:
        raise BackupdError(f"job {name}, step s3-prune: {failed[0].backup_id}: {failed[0].error}")
