"""The catalog-facing S3 operations: ship a run's copies, `verify --s3`, rebuild the catalog from the bucket.

Each copy's record (its objects' VersionIds and Object Lock) goes to the catalog and, through the backup's
verification record, to the store and the bucket, so neither `catalog rebuild` nor a rebuild from S3 loses
the versions that reads and checks name (docs/s3-object-lock.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backupd.errors import BackupdError, LockedError
from backupd.logs import EventLog
from backupd.settings import Config
from backupd.store.backups import MANIFEST, Store, StoredBackup, reading
from backupd.store.catalog import Catalog
from backupd.store.locks import job_lock
from backupd.store.s3 import Bucket, check_copy, copy_backup, copy_record
from backupd.store.s3_base import S3Error, error_text
from backupd.store.s3_lock import NoObjectLock
from backupd.store.segment_ship import verify_segments


def ship(
    config: Config,
    job: str,
    backup: StoredBackup | None,
    catalog: Catalog,
    events: EventLog,
    bucket: Bucket | None = None,
) -> list[str]:
    """Copy `backup` and retry this job's older pending/failed copies (oldest first); errors per backup.

    A failure marks the backup `failed` with its error; it stays local (retention keeps it: not yet in S3)
    and is retried on the next run of the job and by `verify --s3`.
    """
    store = Store(config.store_root)
    todo: list[StoredBackup] = []
    for row in catalog.s3_rows(job):
        if row["s3_state"] in ("pending", "failed") and row["deleted_at"] is None:
            b = store.find(row["backup_id"], job)
            if b is not None and (backup is None or b.backup_id != backup.backup_id):
                todo.append(b)
    if backup is not None:
        todo.append(backup)
    errors: list[str] = []
    if not todo:
        return errors
    try:
        bucket = bucket or Bucket(config.settings.s3)
    except BackupdError as exc:
        errors.append(str(exc))
        return errors
    for b in todo:
        try:
            with reading(b):
                copied = copy_backup(bucket, b)
        except S3Error as exc:
            catalog.set_s3_state(job, b.backup_id, "failed", error=exc.reason)
            events.event("s3_failed", step="s3", backup_id=b.backup_id, error=exc.reason)
            errors.append(str(exc))
            if _unreachable(exc):
                break  # the rest would fail the same way; they stay pending for the next run
            continue
        except BackupdError as exc:  # deleted locally since it was listed: nothing left to copy
            events.event("warning", step="s3", backup_id=b.backup_id, error=str(exc))
            continue
        catalog.set_s3_copied(job, b.backup_id, copied.checksums, copied.record())
        events.event(
            "s3_copied", step="s3", backup_id=b.backup_id, bucket=bucket.name, key=bucket.key(job, b.backup_id)
        )
    return errors


def _unreachable(exc: BaseException) -> bool:
    """The bucket cannot take any copy now (network, credentials, no bucket, no Object Lock)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoObjectLock):
        return True
    cause = exc.__cause__
    if isinstance(cause, EndpointConnectionError | NoCredentialsError):
        return True
    return isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
    )


def copy_hook(config: Config, name: str, backup: StoredBackup, catalog: Catalog, events: EventLog) -> None:
    """Runner hook: ship the new backup (and older pending ones); a failure is a warning, never a failed run."""
    if not config.settings.s3.enabled:
        return
    try:
        errors = ship(config, name, backup, catalog, events)
    except (OSError, ValueError) as exc:  # never let a hook turn a committed run into a failed one
        raise S3Error(error_text(exc), job=name) from exc
    if errors:
        raise S3Error(f"{len(errors)} copy failed (kept local, retried next run): {errors[0]}", job=name)


@dataclass
class CopyReport:
    job: str
    backup_id: str
    ok: bool
    action: str  # checked | copied | failed
    problems: list[str]


def verify_copies(
    config: Config, jobs: list[str], catalog: Catalog, events: EventLog, bucket: Bucket | None = None
) -> list[CopyReport]:
    """`verify --s3`: re-check every copied backup of `jobs`, and copy the pending/failed ones again."""
    bucket = bucket or Bucket(config.settings.s3)
    store = Store(config.store_root)
    out: list[CopyReport] = []
    for job in jobs:
        for row in catalog.s3_rows(job):
            bid = row["backup_id"]
            local = store.find(bid, job)
            if row["s3_state"] in ("pending", "failed"):
                if local is None:
                    out.append(CopyReport(job, bid, False, "failed", [row["s3_error"] or "no local copy to ship"]))
                    continue
                try:  # the job's lock: never abort the in-flight uploads of a run of the same job
                    with job_lock(config.state_dir, job), reading(local):
                        copied = copy_backup(bucket, local)
                except LockedError:
                    out.append(CopyReport(job, bid, True, "skipped", ["the job is running; its run ships this copy"]))
                    continue
                except S3Error as exc:
                    catalog.set_s3_state(job, bid, "failed", error=exc.reason)
                    out.append(CopyReport(job, bid, False, "failed", [exc.reason]))
                    if _unreachable(exc):
                        return out  # every other copy would fail the same way
                    continue
                except BackupdError as exc:  # deleted locally since it was listed
                    out.append(CopyReport(job, bid, False, "failed", [str(exc)]))
                    continue
                catalog.set_s3_copied(job, bid, copied.checksums, copied.record())
                out.append(CopyReport(job, bid, True, "copied", []))
                continue
            recorded = json.loads(row["s3_checksums"] or "{}")
            manifest = json.loads(row["manifest"])
            record = copy_record(row["s3_copy"], local.verdict if local else {})
            try:
                problems = check_copy(bucket, job, bid, manifest, recorded, local.path if local else None, record)
            except Exception as exc:
                out.append(
                    CopyReport(
                        job, bid, False, "failed", [f"checking {bucket.url(bucket.key(job, bid))}: {error_text(exc)}"]
                    )
                )
                return out  # the bucket cannot be reached or read: one line, not one per backup
            if problems:
                catalog.set_s3_state(job, bid, "failed", error=problems[0])
            else:
                catalog.set_s3_state(job, bid, "copied")
            out.append(CopyReport(job, bid, not problems, "checked", problems))
        if job in config.pitr_windows:
            action, problems = verify_segments(config, job, events, bucket)
            out.append(CopyReport(job, "binlog", not problems, action, problems))
    return out


def rebuild_from_s3(config: Config, catalog: Catalog, bucket: Bucket | None = None) -> tuple[int, int]:
    """Recreate the catalog: first from the local store, then every complete backup found in the bucket.

    Returns (local backups, backups in S3). A backup only in S3 gets the row a local one would have, with
    its S3 location as path, so `verify --s3`, S3 retention and a manual download all work from it.
    """
    bucket = bucket or Bucket(config.settings.s3)
    store = Store(config.store_root)
    try:
        remote = bucket.list_backups()
    except Exception as exc:
        raise S3Error(f"listing {bucket.url(bucket.prefix)}: {error_text(exc)}") from exc
    n_local = catalog.rebuild(store)
    n_remote = 0
    for (job, bid), rb in sorted(remote.items()):
        if not rb.complete:
            continue
        local = store.find(bid, job)
        try:  # the verdict object names the versions of the copy; the manifest is read at its version
            verdict = local.verdict if local is not None else bucket.read_verdict(job, bid)
            version = (copy_record(None, verdict).get("versions") or {}).get(MANIFEST)
            manifest = bucket.read_manifest(job, bid, version)
        except Exception as exc:
            raise S3Error(f"reading {bucket.url(bucket.key(job, bid, MANIFEST))}: {error_text(exc)}", job=job) from exc
        path = local.path if local is not None else Path(bucket.url(bucket.key(job, bid)))
        row = catalog.backup(job, bid)
        if row is None:
            catalog.record_backup(StoredBackup(job, bid, path, manifest, verdict), s3_state="copied")
            if local is None:  # Path() would fold "s3://" to "s3:/": store the URL as written
                url = bucket.url(bucket.key(job, bid))
                catalog.db.execute("UPDATE backups SET path=? WHERE job=? AND backup_id=?", (url, job, bid))
                catalog.mark_deleted(job, bid, "not in the local store (rebuilt from S3)")
        if row is None or row["s3_state"] != "copied":
            catalog.set_s3_state(job, bid, "copied")
        n_remote += 1
    return n_local, n_remote
