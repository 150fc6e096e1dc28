"""Restore a committed backup: verify it first, then let its source stream each artifact into the target.

Nothing is written until every artifact of the backup re-hashes to its manifest, so a tampered or rotted
archive never lands half-applied on a server. What "restore" means for each kind of artifact (SQL through
the client, tar extraction with unsafe members refused up front, an RDB for a server to load, a MongoDB
archive through the native restorer) is the source's own `restore` (docs/restore-and-drills.md).
"""

from __future__ import annotations

from backupd.actions.intact import ensure_intact
from backupd.actions.keys import load_keys, require_unlock
from backupd.engine.crypto import unlocking
from backupd.errors import BackupdError, UsageError
from backupd.settings import Config
from backupd.sources import option_owners, source_for
from backupd.sources.base import Progress, Restored, RestoreRequest, no_progress
from backupd.store.backups import Store, StoredBackup, reading

# ------------------------------------------------------------------ choosing and trusting a backup


def pick_backup(store: Store, job: str, backup_id: str | None) -> StoredBackup:
    """The named backup, else the newest one the run marked verified."""
    if backup_id:
        found = store.find(backup_id, job)
        if found is None:
            raise UsageError(f"restore: job {job} has no committed backup {backup_id!r}")
        return found
    good = [b for b in store.backups(job) if b.verified]
    if not good:
        raise BackupdError(f"restore: job {job} has no verified backup")
    return good[-1]


# ------------------------------------------------------------------ the restore


def _refuse_foreign_options(req: RestoreRequest, job_type: str, taken: set[str]) -> None:
    """An option the job's source does not take is a usage error, never silently ignored."""
    foreign = [dest for dest, value in req.options.items() if value and dest not in taken]
    if foreign:
        flags = ", ".join("--" + d.replace("_", "-") for d in foreign)
        owners = sorted({t for d in foreign for t in option_owners(d)})
        raise UsageError(f"restore: {flags}: these options are for {' and '.join(owners)} jobs, not {job_type} jobs")


def restore(
    config: Config, req: RestoreRequest, progress: Progress = no_progress
) -> tuple[StoredBackup, list[Restored]]:
    """Check the request, pick and verify the backup, then restore it. Returns the backup and what went where."""
    job = config.job(req.job)
    source = source_for(job)
    _refuse_foreign_options(req, job.type, {o.dest for o in source.restore_options})
    if req.option("until"):
        from backupd.actions.pitr import restore_until  # the point-in-time path (docs/pitr.md)

        return restore_until(config, req, progress)
    source.check_restore(job, req)
    backup = pick_backup(Store(config.store_root), req.job, req.backup_id)
    source.before_restore(job, backup, req)  # first: its refusal (say, Redis's steps) names --identity itself
    keys = load_keys(config, req.job, req.identity, "restore")
    require_unlock(backup, keys, "restore")
    with reading(backup), unlocking(keys.identities):
        ensure_intact(backup, thorough=False)
        return backup, source.restore(job, backup, req, progress)
