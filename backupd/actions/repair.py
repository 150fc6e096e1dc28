"""`backupd repair JOB/ID`: restore a bad copy of a backup from its good twin, verified (docs/operations.md).

A re-verification that finds the local copy bad while the S3 copy re-reads good downloads the bad artifacts
again, checks them against the manifest, and renames them into place; the other way round it re-uploads the
copy from the local one and re-reads it. Without a good copy nothing is deleted: the backup stays, marked
bad in the store, for a person to look at. It holds the job's lock, so no run or prune works beside it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from backupd.actions.verify import Verifier
from backupd.errors import BackupdError, StepError
from backupd.fsutil import FILE_MODE, fsync_dir
from backupd.settings import Config
from backupd.store.backups import StoredBackup, reading
from backupd.store.catalog import Catalog
from backupd.store.locks import job_lock
from backupd.store.s3 import READ_BLOCK, S3Error, copy_backup, error_text


def repair(config: Config, catalog: Catalog, backup: StoredBackup) -> list[str]:
    """Make both copies of `backup` good again from the good one; returns what it did, one line each.

    Raises BackupdError when neither copy is good (the backup is kept and marked bad)."""
    verifier = Verifier(config, catalog)
    label = f"{backup.job}/{backup.backup_id}"
    with job_lock(config.state_dir, backup.job), reading(backup):
        local = verifier.local(backup)
        if local is None:
            raise BackupdError(f"repair {label}: the backup is gone")
        row = catalog.backup(backup.job, backup.backup_id)
        in_s3 = config.settings.s3.enabled and row is not None and row["s3_state"] in ("copied", "failed")
        remote = verifier.s3_read(backup) if in_s3 else None
        if local.ok and (remote is None or remote.ok):
            return [f"{label}: every copy is good; nothing to repair"]
        if not local.ok and remote is not None and remote.ok:
            done = _restore_local(verifier, backup, local.problems)
            again = verifier.local(backup)
            if again is None or not again.ok:
                raise StepError("repair", f"{label}: the copy downloaded from S3 does not verify either")
            return [*done, f"{label}: local copy verified again: ok"]
        if local.ok and remote is not None:
            try:
                copied = copy_backup(verifier.bucket, backup)
            except S3Error as exc:
                raise StepError("repair", f"{label}: re-upload failed: {exc.reason}") from None
            catalog.set_s3_copied(backup.job, backup.backup_id, copied.checksums, copied.record())
            again = verifier.s3_read(backup)
            if not again.ok:
                raise StepError("repair", f"{label}: the re-uploaded copy does not read back: {again.problems[0]}")
            return [f"{label}: S3 copy re-uploaded from the good local copy and read back: ok"]
    why = "the local copy is bad and there is no S3 copy" if remote is None else "both copies are bad"
    raise BackupdError(f"repair {label}: {why}; the backup is kept and marked bad (restore an older one)")


def _restore_local(verifier: Verifier, backup: StoredBackup, problems: list[str]) -> list[str]:
    """Download each artifact whose local file is bad, check it, fsync it and rename it over the bad one."""
    bad = {p.split(":", 1)[0] for p in problems}
    versions = verifier.versions(backup)
    done = []
    for art in backup.manifest.get("artifacts", []):
        if art["file"] not in bad:
            continue
        key = verifier.bucket.key(backup.job, backup.backup_id, art["file"])
        final = backup.path / art["file"]
        tmp = backup.path / f".repair-{art['file']}"
        try:
            size, digest = _download(verifier, key, versions.get(art["file"]), tmp)
            if size != int(art["bytes"]) or digest != art["sha256"]:
                raise StepError("repair", f"{art['file']}: the S3 object changed since it was read")
            os.replace(tmp, final)
            fsync_dir(backup.path)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(f"{backup.job}/{backup.backup_id}: {art['file']} restored from {verifier.bucket.url(key)}")
    return done


def _download(verifier: Verifier, key: str, version_id: str | None, path: Path) -> tuple[int, str]:
    """Stream the recorded version of an object to `path` (0600, fsynced); its size and sha256."""
    try:
        body = verifier.bucket.body(key, version_id)
        digest = hashlib.sha256()
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            for chunk in body.iter_chunks(READ_BLOCK):
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        raise
    except Exception as exc:  # boto3/botocore: one line naming the object
        raise StepError("repair", f"downloading {verifier.bucket.url(key)}: {error_text(exc)}") from None
    return size, digest.hexdigest()
