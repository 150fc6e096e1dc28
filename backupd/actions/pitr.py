"""Restore to a point and the PITR drills, on top of a source's PointInTime capability (docs/pitr.md).

The generic part (which base, which segments, the window) is `store/pitr.py`; this module checks the job
offers the capability, unlocks the keys (segments are encrypted like the job's backups), holds the base
backup against a concurrent prune and hands the rest to the source."""

from __future__ import annotations

from backupd.actions.intact import ensure_intact
from backupd.actions.keys import load_keys, require_unlock
from backupd.engine.crypto import unlocking
from backupd.errors import UsageError
from backupd.settings import Config, JobBase
from backupd.sources import source_for
from backupd.sources.base import PointInTime, Progress, Restored, RestoreRequest, no_progress
from backupd.store.backups import Store, StoredBackup, reading
from backupd.store.pitr import parse_until, pick_database, plan_restore, reading_segments
from backupd.store.segments import SegmentStore


def pitr_source(job: JobBase, name: str, what: str) -> PointInTime[JobBase]:
    source = source_for(job)
    if not isinstance(source, PointInTime) or not source.pitr_enabled(job):
        raise UsageError(f"{what}: job {name} has no point-in-time recovery (set [pitr] enabled = true)")
    return source


def restore_until(
    config: Config, req: RestoreRequest, progress: Progress = no_progress
) -> tuple[StoredBackup, list[Restored]]:
    """`restore JOB --until TIME`: the base the plan picks (returned) restored, then rolled forward."""
    job = config.job(req.job)
    source = pitr_source(job, req.job, "restore --until")
    if req.backup_id:
        raise UsageError("restore: --until picks its base backup itself; drop --backup")
    source_for(job).check_restore(job, req)
    backups = Store(config.store_root).backups(req.job)
    segments = SegmentStore(config.store_root, req.job)
    until = parse_until(str(req.option("until")))
    base = plan_restore(backups, segments.segments(), until, pick_database(backups, req.option("database"))).base
    keys = load_keys(config, req.job, req.identity, "restore")
    require_unlock(base.backup, keys, "restore")
    with reading(base.backup), reading_segments(segments), unlocking(keys.identities):
        ensure_intact(base.backup, thorough=False)  # the base's artifacts re-hashed, as a plain restore does
        source_for(job).before_restore(job, base.backup, req)
        return base.backup, source.restore_until(job, backups, segments, req, progress)
