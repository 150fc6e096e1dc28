"""Restore drills: restore a job's newest verified backup into a scratch target and compare it with the
stats recorded at dump time.

A backup is only as good as its last successful restore. The job's source restores into a throwaway server
(`backupd.scratch`) or a configured `[drill] target` it may create and drop, and checks what arrived against
the manifest; this module picks and verifies the backup, records the outcome in the catalog, and owns the
ExitStack and work directory every drill's servers and databases are torn down through, so SIGTERM/SIGINT
(raised as `Terminated`) leave no server or temp dir behind (docs/restore-and-drills.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from backupd.actions.intact import ensure_intact
from backupd.actions.keys import load_keys, require_unlock
from backupd.actions.restore import pick_backup
from backupd.engine.crypto import unlocking
from backupd.errors import BackupdError, UsageError
from backupd.fsutil import ensure_private_dir
from backupd.logs import EventLog
from backupd.notify import report as notify_report
from backupd.scratch.base import ScratchError
from backupd.settings import Config
from backupd.sources import source_for
from backupd.sources.base import Check, DrillContext, DrillResult
from backupd.store.backups import Store, StoredBackup, reading
from backupd.store.catalog import Catalog

PITR_NOTE = "pitr drill"  # the first note of a PITR drill's record: what `pitr_turn` alternates on


@dataclass
class DrillReport:
    job: str
    backup_id: str | None
    outcome: str = "failed"
    checks: list[Check] = field(default_factory=list)
    restore_seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # what the drill could not prove (a stand-in server, say)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "restore_seconds": round(self.restore_seconds, 3)}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------ one drill


def drill_pick(store: Store, catalog: Catalog, job: str, pick: str, backup_id: str | None = None) -> StoredBackup:
    """The backup a drill restores: the one named, else the newest verified one, except that with
    `drill_pick = "rotate"` a drill after one of the newest takes the kept backup drilled least recently
    (never drilled first), so every backup retention keeps is restored once per cycle."""
    if backup_id:
        return pick_backup(store, job, backup_id)
    good = [b for b in store.backups(job) if b.verified]
    if not good:
        raise BackupdError(f"drill: job {job} has no verified backup")
    newest = good[-1]
    last = catalog.last_drill(job)
    if pick != "rotate" or len(good) == 1 or last is None or last["backup_id"] != newest.backup_id:
        return newest
    drilled = catalog.drilled_at(job)
    return min(good[:-1], key=lambda b: (drilled.get(b.backup_id, ""), b.backup_id))


def drill_job(
    config: Config, name: str, catalog: Catalog, backup_id: str | None = None, events: EventLog | None = None,
    identity: str | None = None, pitr: bool = False,
) -> DrillReport:
    """Drill one job; the outcome is recorded in the catalog whatever happens (interrupts included), then a
    failure (or the first good drill after one) is notified. An encrypted backup needs its identity
    (`identity`, else $BACKUPD_AGE_IDENTITY_FILE or `identity_file`): without one the drill fails.
    `pitr`: the point-in-time drill instead (docs/pitr.md)."""
    out = _pitr_drill_job(config, name, catalog, identity) if pitr else _drill_job(config, name, catalog, backup_id,
                                                                                   identity)
    bad = next((c.check for c in out.checks if not c.ok), None)
    notify_report.drill_finished(
        config, catalog, events or EventLog(config.settings.logging.format, quiet=True), name, out.backup_id,
        out.ok, out.error, bad,
    )
    return out


def _drill_job(config: Config, name: str, catalog: Catalog, backup_id: str | None,
               identity: str | None = None) -> DrillReport:  # fmt: skip
    job = config.job(name)
    store = Store(config.store_root)
    try:
        backup: StoredBackup | None = drill_pick(store, catalog, name, job.drill_pick, backup_id)
    except BackupdError as exc:
        backup = None
        report = DrillReport(name, None, error=first_line(exc))
    drill_id = catalog.start_drill(name, backup.backup_id if backup else None)
    if backup is None:
        catalog.finish_drill(drill_id, "failed", [], None, report.error)
        return report
    picked = backup
    return _execute(config, name, catalog, drill_id, picked, identity,
                    lambda ctx: source_for(job).drill(job, picked, ctx))


def _pitr_drill_job(config: Config, name: str, catalog: Catalog, identity: str | None) -> DrillReport:
    """Base N rolled forward to base N+1 and compared with N+1's stats, then a random instant of the window;
    recorded against N+1 (the backup the comparison proves reachable)."""
    from backupd.actions.pitr import pitr_source
    from backupd.store.pitr import bases, reading_segments
    from backupd.store.segments import SegmentStore

    job = config.job(name)
    source = pitr_source(job, name, "drill --pitr")
    backups = Store(config.store_root).backups(name)
    found = bases(backups)
    newest = found[-1].backup if found else None
    drill_id = catalog.start_drill(name, newest.backup_id if newest else None)
    if newest is None:
        report = DrillReport(name, None, error=f"drill: job {name} has no verified base backup with a binlog position")
        catalog.finish_drill(drill_id, "failed", [], None, report.error)
        return report
    segments = SegmentStore(config.store_root, name)

    def body(ctx: DrillContext) -> DrillResult:
        ctx.stack.enter_context(reading_segments(segments))  # a prune meanwhile leaves them for next time
        return source.pitr_drill(job, backups, segments, ctx)

    return _execute(config, name, catalog, drill_id, newest, identity, body, pitr=True)


def _execute(config: Config, name: str, catalog: Catalog, drill_id: int, backup: StoredBackup,
             identity: str | None, body: Callable[[DrillContext], DrillResult], pitr: bool = False) -> DrillReport:
    """Run a drill's body with its work dir, keys and ExitStack; record the outcome whatever happens."""
    report = DrillReport(name, backup.backup_id)
    work = ensure_private_dir(config.state_dir / "drills") / f"{name}-{backup.backup_id}-{os.getpid()}"
    try:
        with ExitStack() as stack:
            work.mkdir(mode=0o700)
            stack.callback(shutil.rmtree, work, True)
            stack.enter_context(reading(backup))  # a prune meanwhile (timer mode) keeps this backup
            keys = load_keys(config, name, identity, "drill")
            proven = require_unlock(backup, keys, "drill")
            stack.enter_context(unlocking(keys.identities))
            ensure_intact(backup, step="drill verify")
            if proven:
                report.notes.append(proven)
            held = {backup.backup_id}

            def hold(other: StoredBackup) -> None:
                if other.backup_id not in held:
                    held.add(other.backup_id)
                    stack.enter_context(reading(other))
                    ensure_intact(other, step="drill verify")

            ctx = DrillContext(stack, work, report.notes, hold)
            result = body(ctx)
            if not result.checks:
                raise BackupdError(f"drill: backup {backup.backup_id} has nothing to compare")
            report.checks, report.restore_seconds = result.checks, result.restore_seconds
        report.outcome = "ok" if all(c.ok for c in report.checks) else "failed"
        if not report.ok:
            bad = next(c for c in report.checks if not c.ok)
            report.error = f"{bad.check}: expected {bad.expected}, got {bad.actual}"
    except (BackupdError, ScratchError, OSError) as exc:
        report.error = first_line(exc)
    except Exception as exc:  # a driver error or a bug: a failed drill with its type; the next drills still run
        report.error = f"internal error: {type(exc).__name__}: {first_line(exc)}"
    except BaseException as exc:  # Terminated / KeyboardInterrupt: record, then keep unwinding
        report.error = f"interrupted: {first_line(exc)}"
        catalog.finish_drill(drill_id, "failed", [asdict(c) for c in report.checks], None, report.error, report.notes)
        raise
    checks = [asdict(c) for c in report.checks]
    seconds = round(report.restore_seconds, 3)
    if pitr:
        report.notes.insert(0, PITR_NOTE)
    catalog.finish_drill(drill_id, report.outcome, checks, seconds, report.error, report.notes)
    return report


def pitr_turn(config: Config, name: str, catalog: Catalog) -> bool:
    """Drills of a PITR job alternate: after a plain drill the next one is the PITR drill, and back."""
    from backupd.sources.base import PointInTime

    job = config.job(name)
    source = source_for(job)
    if not isinstance(source, PointInTime) or not source.pitr_enabled(job):
        return False
    last = catalog.last_drill(name)
    if last is None:
        return False
    notes = json.loads(last["notes"] or "[]")  # the column exists (the catalog adds it on open)
    return not (notes and notes[0] == PITR_NOTE)


def drill_jobs(
    config: Config, names: list[str], backup_id: str | None = None, identity: str | None = None, pitr: bool = False
) -> list[DrillReport]:
    for n in names:
        config.job(n)  # unknown names are a usage error before any drill starts
    if backup_id and len(names) != 1:
        raise UsageError("drill: --backup ID goes with exactly one JOB")
    if backup_id and pitr:
        raise UsageError("drill: --pitr picks its two base backups itself; drop --backup")
    catalog = Catalog(config.state_dir)
    events = EventLog(config.settings.logging.format, stream=sys.stderr, level="warning")
    try:
        out = []
        for n in names:
            use_pitr = pitr or (not backup_id and pitr_turn(config, n, catalog))
            out.append(drill_job(config, n, catalog, backup_id, events, identity, use_pitr))
        return out
    finally:
        catalog.close()
