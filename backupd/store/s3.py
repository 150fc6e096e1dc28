"""Copies of committed backups in S3: the bucket, uploading and checking one backup's copy.

Layout: `{prefix}{job}/{backup_id}/{file}` for each artifact, then `manifest.json` last. The manifest is
uploaded only once every artifact was checked, so a backup in the bucket is complete exactly when its
manifest is there; a crash mid-copy leaves objects without a manifest, which the next copy overwrites.

Checking a copy never trusts the upload call: HEAD each object and compare its size, our sha256 (object
metadata `x-amz-meta-sha256`), the SHA256 checksum S3 computed itself and, under Object Lock, the lock's
mode and retain-until date. For a multipart object S3 reports a checksum of the part checksums, so we
compute the same from the local file with the same part size.

On a versioned bucket (Object Lock needs one) each upload's VersionId is recorded: in the catalog and in
the backup's verification record, locally and beside the copy, so a rebuild keeps it. Reads and checks
name that version, so a later PUT under the same key never stands in for the backup (s3_lock.py).
The catalog-facing operations (ship, verify --s3, rebuild from the bucket) are in s3_sync.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupd.settings import S3Cfg
from backupd.store.backups import MANIFEST, VERDICT, Store, StoredBackup, is_backup_id
from backupd.store.s3_base import (
    MAX_PARTS,
    MIN_PART,
    READ_BLOCK,
    S3Error,
    b64_sha256_of_hex,
    error_text,
    file_checksum,
    part_size,
    same_checksum,
)
from backupd.store.s3_lock import (
    Clock,
    Lock,
    ObjVersion,
    SystemClock,
    delete_versions,
    list_versions,
    lock_problems,
    locked_until,
    new_lock,
    read_locks,
    require_lock_enabled,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "MAX_PARTS", "MIN_PART", "READ_BLOCK", "Bucket", "Copied", "RemoteBackup", "S3Error", "check_copy",
    "copy_backup", "copy_record", "error_text", "file_checksum", "part_size",
]  # fmt: skip

_VERSIONED_CALLS = ("PutObject", "CompleteMultipartUpload")
_NO_VERSIONS = ("AccessDenied", "NotImplemented", "MethodNotAllowed")


@dataclass
class RemoteBackup:
    """One backup's objects in the bucket; complete once its manifest is there."""

    job: str
    backup_id: str
    keys: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def complete(self) -> bool:
        return any(k.endswith("/" + MANIFEST) for k in self.keys)


class Bucket:
    """The configured bucket and prefix, with a boto3 client tuned for large, retried transfers.

    Every object it puts carries the configured Object Lock (mode, retain-until = its upload time from
    `clock` + object_lock_days) and a SHA256 checksum on each part; `upload_file` and `put_bytes` return
    the object's VersionId (None on an unversioned bucket) and `locks` remembers the lock each key got.
    """

    def __init__(self, cfg: S3Cfg, client: S3Client | None = None, clock: Clock | None = None) -> None:
        if not cfg.bucket:
            raise S3Error("s3.bucket is not set")
        self.cfg = cfg
        self.name = cfg.bucket
        self.prefix = cfg.prefix
        self.clock: Clock = clock or SystemClock()
        self.client: S3Client = client or self._make_client(cfg)
        self.locks: dict[str, Lock] = {}  # key -> the lock its last upload through this Bucket carried
        self._versions: dict[str, str | None] = {}  # key -> VersionId of its last completed upload
        self._lock_checked = False
        events = self.client.meta.events
        for op in _VERSIONED_CALLS:  # s3transfer does not return responses: read the VersionId off them
            events.register(f"before-parameter-build.s3.{op}", _note_key, unique_id=f"backupd-key-{op}")
            events.register(f"after-call.s3.{op}", self._note_version, unique_id=f"backupd-version-{op}-{id(self)}")

    @staticmethod
    def _make_client(cfg: S3Cfg) -> S3Client:
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session(profile_name=cfg.profile)
            return session.client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                config=BotoConfig(
                    retries={"mode": "standard", "max_attempts": cfg.max_attempts},
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    max_pool_connections=cfg.max_concurrency + 2,
                    s3={"addressing_style": "path"} if cfg.endpoint_url else None,
                ),
            )
        except BotoCoreError as exc:
            raise S3Error(error_text(exc)) from None

    def _note_version(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        key = context.get("backupd_key")
        if key is not None and "Error" not in parsed:
            vid = parsed.get("VersionId")
            self._versions[key] = vid if vid and vid != "null" else None

    def key(self, job: str, backup_id: str, name: str = "") -> str:
        return f"{self.prefix}{job}/{backup_id}/{name}"

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def require_object_lock(self) -> None:
        """With `object_lock` set, prove once per Bucket that the bucket has Object Lock enabled (S3Error)."""
        if self.cfg.object_lock != "none" and not self._lock_checked:
            require_lock_enabled(self.client, self.name, self.cfg.object_lock)
            self._lock_checked = True

    def _extra_args(self, sha256_hex: str, lock: Lock | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "ChecksumAlgorithm": "SHA256",  # on every part of a multipart upload too; Object Lock needs it
            "StorageClass": self.cfg.storage_class,
            "Metadata": {"sha256": sha256_hex},
        }
        if self.cfg.sse:
            args["ServerSideEncryption"] = self.cfg.sse
            if self.cfg.sse == "aws:kms" and self.cfg.kms_key_id:
                args["SSEKMSKeyId"] = self.cfg.kms_key_id
        if lock is not None:
            args.update(lock.args())
        return args

    def _new_lock(self, key: str) -> Lock | None:
        lock = new_lock(self.cfg, self.clock.now())
        if lock is not None:
            self.locks[key] = lock
        return lock

    def upload_file(self, path: Path, key: str, size: int, sha256_hex: str) -> str | None:
        """Stream one file up with the transfer manager; parts sized to the file (< 10,000 parts), each with
        its SHA256 checksum, the lock on the CreateMultipartUpload. Returns the new VersionId.

        On failure s3transfer aborts the multipart upload it started, so no parts are left billed.
        """
        from boto3.s3.transfer import TransferConfig

        ps = part_size(size)
        tc = TransferConfig(
            multipart_threshold=MIN_PART,
            multipart_chunksize=ps,
            max_concurrency=self.cfg.max_concurrency,
            use_threads=True,
        )
        self._versions.pop(key, None)
        args = self._extra_args(sha256_hex, self._new_lock(key))
        self.client.upload_file(str(path), self.name, key, ExtraArgs=args, Config=tc)
        return self._versions.pop(key, None)

    def put_bytes(self, data: bytes, key: str) -> str | None:
        """PUT a small object (manifest, verification record) with checksum and lock; its VersionId."""
        return self._put(data, key, self._new_lock(key))

    def _put(self, data: bytes, key: str, lock: Lock | None) -> str | None:
        digest = hashlib.sha256(data).hexdigest()
        resp = self.client.put_object(Bucket=self.name, Key=key, Body=data, **self._extra_args(digest, lock))
        vid = resp.get("VersionId")
        return vid if vid and vid != "null" else None

    def head(self, key: str, version_id: str | None = None) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.name, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        try:
            return dict(self.client.head_object(**args))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
                return None
            raise

    def check_object(
        self,
        key: str,
        size: int,
        sha256_hex: str,
        checksum: str | None,
        version_id: str | None = None,
        lock: Lock | None = None,
    ) -> tuple[list[str], str]:
        """Problems with one object (empty when good) and the checksum S3 reports for it.

        `version_id` names the version to check (else the current one); `lock` is the Object Lock it must
        still carry (default: the lock this Bucket uploaded the key with, if any)."""
        head = self.head(key, version_id)
        where = self.url(key) + (f" (version {version_id})" if version_id else "")
        if head is None:
            return [f"{where}: missing"], ""
        problems = []
        reported = str(head.get("ChecksumSHA256") or "")
        if int(head.get("ContentLength", -1)) != size:
            problems.append(f"{where}: size {head.get('ContentLength')} != {size}")
        meta = head.get("Metadata", {}).get("sha256")
        if meta != sha256_hex:
            problems.append(f"{where}: x-amz-meta-sha256 {meta or 'missing'} != manifest sha256")
        if checksum is not None and not same_checksum(reported, checksum):
            problems.append(f"{where}: S3 SHA256 checksum {reported or 'missing'} != expected {checksum}")
        lock = lock or self.locks.get(key)
        if lock is not None:
            problems.extend(lock_problems(where, head, lock))
        return problems, reported

    def list_backups(self, job: str | None = None) -> dict[tuple[str, str], RemoteBackup]:
        """Everything under the prefix (or one job's part of it), grouped by (job, backup_id)."""
        out: dict[tuple[str, str], RemoteBackup] = {}
        base = self.prefix + (f"{job}/" if job else "")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.name, Prefix=base):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.prefix) :].split("/")
                if len(rest) < 3 or not is_backup_id(rest[1]):
                    continue  # not ours
                rb = out.setdefault((rest[0], rest[1]), RemoteBackup(rest[0], rest[1]))
                rb.keys.append(obj["Key"])
                rb.bytes += int(obj.get("Size", 0))
        return out

    def body(self, key: str, version_id: str | None = None) -> Any:
        """The streaming body of an object, of the named version when there is one."""
        args: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        return self.client.get_object(**args)["Body"]

    def read_manifest(self, job: str, backup_id: str, version_id: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body(self.key(job, backup_id, MANIFEST), version_id).read())
        return data

    def put_verdict(self, backup: StoredBackup) -> str | None:
        """Mirror a backup's recorded verifications (and its copy's versions) next to its manifest in the
        bucket, so a catalog rebuilt from S3 alone keeps a verdict of "bad" (docs/operations.md).

        It is put again on every new verdict, so it is locked until the copy's own date, not for another
        object_lock_days: re-verifying a backup never keeps its copy from being pruned. Once the copy's lock
        has expired, the record of a copy that is no longer immutable goes up unlocked."""
        key = self.key(backup.job, backup.backup_id, VERDICT)
        data = json.dumps(backup.verdict, indent=2, sort_keys=True).encode() + b"\n"
        lock = Lock.from_dict(backup.verdict.get("s3", {}).get("lock"))
        if self.cfg.object_lock == "none" or lock is None:
            return self.put_bytes(data, key)
        if lock.until <= self.clock.now():
            self.locks.pop(key, None)
            return self._put(data, key, None)
        self.locks[key] = lock
        return self._put(data, key, lock)

    def read_verdict(self, job: str, backup_id: str) -> dict[str, Any]:
        """The verdict object of a backup, {} when there is none; unreadable counts as failed."""
        from botocore.exceptions import ClientError

        try:
            body = self.body(self.key(job, backup_id, VERDICT))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {}
            raise
        try:
            data = json.loads(body.read())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except ValueError:
            return {"local": {"ok": False, "level": "record", "problems": [f"{VERDICT} is unreadable"]}}

    def read_digest(self, key: str, version_id: str | None = None) -> tuple[int, str]:
        """Download an object (streamed, constant memory) and return its size and sha256: what a sampled
        re-verification compares with the manifest, since HEAD checksums only prove what S3 says it holds."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.body(key, version_id).iter_chunks(READ_BLOCK):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def locked_until(self, rb: RemoteBackup, now: datetime) -> datetime | None:
        """When the last Object Lock on any version of the backup's objects expires (None: none is left).
        Only asked with `object_lock` set; HEADs every version."""
        versions = list_versions(self.client, self.name, self.key(rb.job, rb.backup_id))
        read_locks(self.client, self.name, versions)
        return locked_until(versions, now)

    def delete_backup(self, rb: RemoteBackup) -> list[str]:
        """Delete every version and delete marker of the backup's objects by VersionId, manifest first (an
        interrupted delete leaves an incomplete, never counted, backup). Returns refused deletions."""
        from botocore.exceptions import ClientError

        try:
            versions = list_versions(self.client, self.name, self.key(rb.job, rb.backup_id))
        except ClientError as exc:  # a key from before versions were listed, or a store without the call
            if self.cfg.object_lock != "none" or exc.response.get("Error", {}).get("Code") not in _NO_VERSIONS:
                raise
            versions = [ObjVersion(k, None) for k in rb.keys]
        return delete_versions(self.client, self.name, versions, MANIFEST)

    def abort_stale_uploads(self, job: str, under: str = "") -> int:
        """Abort multipart uploads left by a killed copy of this job (call with the job's lock held). Backup
        copies pass no `under`, which leaves the job's `binlog/` alone: its segments are shipped beside a run
        by the stream, under their own lock, which aborts its own with `under="binlog/"`."""
        n = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.name, Prefix=f"{self.prefix}{job}/{under}"):
            for up in page.get("Uploads", []):
                if not under and up["Key"].startswith(f"{self.prefix}{job}/binlog/"):
                    continue
                self.client.abort_multipart_upload(Bucket=self.name, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
        return n


def _note_key(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context["backupd_key"] = params.get("Key")


# ------------------------------------------------------------------ copy and check one backup


@dataclass
class Copied:
    """What one copy left in the bucket: S3's checksums, each object's VersionId, the weakest lock."""

    checksums: dict[str, str]
    versions: dict[str, str]
    lock: Lock | None

    def record(self) -> dict[str, Any]:
        return {"versions": self.versions, "lock": self.lock.to_dict() if self.lock else None}


def copy_record(row_json: str | None, verdict: dict[str, Any]) -> dict[str, Any]:
    """A copy's record ({"versions": {file: id}, "lock": {...}}): the catalog's, else the store's verdict."""
    if row_json:
        data = json.loads(row_json)
        if isinstance(data, dict):
            return data
    s3 = verdict.get("s3", {})
    return {"versions": s3.get("versions") or {}, "lock": s3.get("lock")}


def _manifest_bytes(backup: StoredBackup) -> bytes:
    path = backup.path / MANIFEST
    return path.read_bytes() if path.is_file() else json.dumps(backup.manifest, indent=2, sort_keys=True).encode()


def copy_backup(bucket: Bucket, backup: StoredBackup) -> Copied:
    """Upload every artifact, check them, then upload and check the manifest; record the versions in the
    backup's verification record and mirror it beside the copy.

    Raises S3Error; the caller records the state. Uploading again is safe (same keys get new versions).
    """
    job, bid = backup.job, backup.backup_id
    try:
        bucket.require_object_lock()
        bucket.abort_stale_uploads(job)
        arts = backup.manifest.get("artifacts", [])
        versions: dict[str, str] = {}
        for a in arts:
            vid = bucket.upload_file(backup.path / a["file"], bucket.key(job, bid, a["file"]), int(a["bytes"]),
                                     a["sha256"])  # fmt: skip
            if vid:
                versions[a["file"]] = vid
        sums = {}
        for a in arts:
            expected = file_checksum(backup.path / a["file"], int(a["bytes"]), a["sha256"])
            problems, reported = bucket.check_object(
                bucket.key(job, bid, a["file"]), int(a["bytes"]), a["sha256"], expected, versions.get(a["file"])
            )
            if problems:
                raise S3Error(f"copy of {bid} failed its check: {problems[0]}", job=job)
            sums[a["file"]] = reported
        data = _manifest_bytes(backup)
        digest = hashlib.sha256(data).hexdigest()
        key = bucket.key(job, bid, MANIFEST)
        vid = bucket.put_bytes(data, key)
        if vid:
            versions[MANIFEST] = vid
        problems, reported = bucket.check_object(key, len(data), digest, b64_sha256_of_hex(digest), vid)
        if problems:
            raise S3Error(f"copy of {bid} failed its check: {problems[0]}", job=job)
        sums[MANIFEST] = reported
        keys = [bucket.key(job, bid, a["file"]) for a in arts] + [key]
        locks = [bucket.locks[k] for k in keys if k in bucket.locks]
        copied = Copied(sums, versions, min(locks, key=lambda lk: lk.until) if locks else None)
        if backup.path.is_dir():  # the store is the truth: the versions live beside the manifest
            Store(backup.path.parent.parent).record_s3_copy(backup, copied.record())
        bucket.put_verdict(backup)
        return copied
    except S3Error:
        raise
    except Exception as exc:  # boto3/botocore/OS errors: one line, recorded on the backup
        raise S3Error(f"copy of {bid} to {bucket.url(bucket.key(job, bid))}: {error_text(exc)}", job=job) from exc


def check_copy(
    bucket: Bucket,
    job: str,
    backup_id: str,
    manifest: dict[str, Any],
    recorded: dict[str, str],
    local: Path | None,
    record: dict[str, Any] | None = None,
) -> list[str]:
    """Re-check a copy: size, our sha256, S3's checksum and the lock of each recorded version.

    The expected S3 checksum comes from the local file when it is still there, else from what S3 reported
    when the copy was first checked (kept in the catalog).
    """
    versions = (record or {}).get("versions") or {}
    lock = Lock.from_dict((record or {}).get("lock"))
    problems: list[str] = []
    for a in manifest.get("artifacts", []):
        path = local / a["file"] if local is not None else None
        if path is not None and path.is_file():
            expected: str | None = file_checksum(path, int(a["bytes"]), a["sha256"])
        else:
            expected = recorded.get(a["file"])
        if expected is None and int(a["bytes"]) < MIN_PART:
            expected = b64_sha256_of_hex(a["sha256"])
        key = bucket.key(job, backup_id, a["file"])
        found, _ = bucket.check_object(key, int(a["bytes"]), a["sha256"], expected, versions.get(a["file"]), lock)
        problems.extend(found)
    key = bucket.key(job, backup_id, MANIFEST)
    head = bucket.head(key, versions.get(MANIFEST))
    if head is None:
        problems.append(f"{bucket.url(key)}: missing")
    elif lock is not None:
        problems.extend(lock_problems(bucket.url(key), head, lock))
    return problems
