"""Committed binlog segments in S3: copy and check one, list, fetch back (disaster recovery), delete.

Layout: `{prefix}{job}/binlog/{seq:08d}.binlog.zst[.age]` (the data file as stored: compressed, and
ciphertext when the job encrypts), then `{prefix}{job}/binlog/{seq:08d}.json`, its manifest, last: a
segment is in the bucket exactly when its manifest is. Each object carries the same SHA256 checksum,
`x-amz-meta-sha256` and Object Lock as a backup's objects (store/s3.py), and is checked by HEAD.

Once both objects pass their check, `{seq:08d}.s3.json` (0600, written to a temp name, fsynced, renamed)
is put beside the segment: its VersionIds, S3's checksums and the lock. The segment's own manifest is
never rewritten. A segment without that record is pending: the stream's shipper and `backupd run` copy it,
and local retention keeps it. A fetch from the bucket writes the same record, so the state survives both
a `catalog rebuild` (the store is the truth) and the loss of the machine (the bucket is).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd.fsutil import fsync_dir, replace_private_file, write_private_file
from backupd.store.s3 import Bucket
from backupd.store.s3_base import S3Error, b64_sha256_of_hex, error_text, file_checksum
from backupd.store.s3_lock import Lock, delete_versions, iso, list_versions, locked_until, read_locks
from backupd.store.segments import (
    MANIFEST_SUFFIX,
    SEGMENTS_DIR,
    TMP_PREFIX,
    Segment,
    SegmentStore,
    check_segment,
    segment_file_name,
)

_KEY_RE = re.compile(r"^(\d{8})(?:\.binlog(\..+)?|\.json)$")


def segment_prefix(bucket: Bucket, job: str) -> str:
    return f"{bucket.prefix}{job}/{SEGMENTS_DIR}/"


def segment_key(bucket: Bucket, job: str, name: str) -> str:
    return segment_prefix(bucket, job) + name


def pending(segments: SegmentStore) -> list[Segment]:
    """Committed segments not yet copied and checked (no `.s3.json`), oldest first."""
    return [s for s in segments.segments() if not s.manifest.get("unreadable") and s.s3_record() is None]


def _write_record(seg: Segment, record: dict[str, Any]) -> None:
    tmp = seg.path.parent / f"{TMP_PREFIX}{seg.seq:08d}.s3"
    write_private_file(tmp, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
    os.replace(tmp, seg.s3_record_path)
    fsync_dir(seg.path.parent)


def _remote_digest(bucket: Bucket, manifest_key: str) -> str | None:
    """The sha256 a segment manifest already in the bucket names (None: no readable manifest there, so the
    key holds at most a partial or damaged copy of ours, which a new copy replaces)."""
    from botocore.exceptions import ClientError

    try:
        data = json.loads(bucket.body(manifest_key).read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    except ValueError:
        return None
    return str(data["sha256"]) if isinstance(data, dict) and "sha256" in data else None


def copy_segment(bucket: Bucket, job: str, seg: Segment) -> dict[str, Any]:
    """Upload the data file, check it, then upload and check the manifest; write `.s3.json`. S3Error."""
    name = seg.path.name
    man_name = seg.manifest_path.name
    try:
        bucket.require_object_lock()
        problems = check_segment(seg)  # never ship bytes that no longer match their manifest
        if problems:
            raise S3Error(f"copy of segment {seg.seq:08d}: {problems[0]}", job=job)
        size, digest = int(seg.manifest["bytes"]), str(seg.manifest["sha256"])
        key = segment_key(bucket, job, name)
        theirs = _remote_digest(bucket, segment_key(bucket, job, man_name))
        if theirs is not None and theirs != digest:  # another chain's complete segment under this number
            raise S3Error(
                f"copy of segment {seg.seq:08d}: {bucket.url(key)} already holds another segment (sha256 "
                f"{theirs[:12]}); not overwritten. On a new machine run `backupd catalog rebuild --from-s3` "
                "before the first stream (docs/pitr.md)", job=job,
            )
        versions: dict[str, str] = {}
        vid = bucket.upload_file(seg.path, key, size, digest)
        if vid:
            versions[name] = vid
        found, reported = bucket.check_object(key, size, digest, file_checksum(seg.path, size, digest), vid)
        if found:
            raise S3Error(f"copy of segment {seg.seq:08d} failed its check: {found[0]}", job=job)
        sums = {name: reported}
        data = seg.manifest_path.read_bytes()
        mdigest = hashlib.sha256(data).hexdigest()
        mkey = segment_key(bucket, job, man_name)
        mvid = bucket.put_bytes(data, mkey)
        if mvid:
            versions[man_name] = mvid
        found, reported = bucket.check_object(mkey, len(data), mdigest, b64_sha256_of_hex(mdigest), mvid)
        if found:
            raise S3Error(f"copy of segment {seg.seq:08d} failed its check: {found[0]}", job=job)
        sums[man_name] = reported
        locks = [bucket.locks.pop(k) for k in (key, mkey) if k in bucket.locks]  # a long stream: do not pile up
        lock = min(locks, key=lambda lk: lk.until) if locks else None
        record = {
            "bucket": bucket.name, "key": key, "versions": versions, "checksums": sums,
            "lock": lock.to_dict() if lock else None, "copied_at": iso(bucket.clock.now()),
        }  # fmt: skip
        _write_record(seg, record)
        return record
    except S3Error:
        raise
    except Exception as exc:  # boto3/botocore/OS errors: one line
        raise S3Error(f"copy of segment {seg.seq:08d} to {bucket.url(segment_key(bucket, job, name))}:"
                      f" {error_text(exc)}", job=job) from exc  # fmt: skip


def check_segment_copy(bucket: Bucket, job: str, seg: Segment) -> list[str]:
    """Re-check a copied segment's objects (size, sha256, checksum, lock) at the recorded versions."""
    record = seg.s3_record()
    if record is None:
        return [f"segment {seg.seq:08d}: not copied to S3 yet"]
    versions = record.get("versions") or {}
    lock = Lock.from_dict(record.get("lock"))
    size, digest = int(seg.manifest["bytes"]), str(seg.manifest["sha256"])
    key = segment_key(bucket, job, seg.path.name)
    found, _ = bucket.check_object(key, size, digest, file_checksum(seg.path, size, digest),
                                   versions.get(seg.path.name), lock)  # fmt: skip
    data = seg.manifest_path.read_bytes()
    mdigest = hashlib.sha256(data).hexdigest()
    mkey = segment_key(bucket, job, seg.manifest_path.name)
    more, _ = bucket.check_object(mkey, len(data), mdigest, b64_sha256_of_hex(mdigest),
                                  versions.get(seg.manifest_path.name), lock)  # fmt: skip
    return found + more


@dataclass
class RemoteSegment:
    """One segment's objects in the bucket; complete once its manifest is there."""

    seq: int
    data_key: str | None = None
    manifest_key: str | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.data_key is not None and self.manifest_key is not None


def list_segments(bucket: Bucket, job: str) -> dict[int, RemoteSegment]:
    """The job's segments in the bucket by seq (the newest version of each key)."""
    out: dict[int, RemoteSegment] = {}
    base = segment_prefix(bucket, job)
    for page in bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=base):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(base) :]
            m = _KEY_RE.match(name)
            if m is None:
                continue
            rs = out.setdefault(int(m.group(1)), RemoteSegment(int(m.group(1))))
            rs.keys.append(obj["Key"])
            if name.endswith(MANIFEST_SUFFIX):
                rs.manifest_key = obj["Key"]
            else:
                rs.data_key = obj["Key"]
    return out


def read_remote_manifest(bucket: Bucket, rs: RemoteSegment, version_id: str | None = None) -> dict[str, Any]:
    return _parse_manifest(bucket, rs, bucket.body(_mkey(rs), version_id).read())


def _mkey(rs: RemoteSegment) -> str:
    assert rs.manifest_key is not None
    return rs.manifest_key


def _parse_manifest(bucket: Bucket, rs: RemoteSegment, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "sha256" not in data or "bytes" not in data:
        raise S3Error(f"{bucket.url(_mkey(rs))}: not a segment manifest")
    return data


def fetch_segments(bucket: Bucket, store_root: Path, job: str) -> tuple[int, list[str]]:
    """Disaster recovery: download every complete segment of `job` the local store lacks, each checked
    against its manifest's size and sha256 on arrival (temp name, fsync, rename, manifest last), with its
    `.s3.json` record, so it is not copied again; a local segment that lost its record gets it back when
    its copy passes the check. Returns (fetched, problems); a bad one is not committed."""
    segments = SegmentStore(store_root, job)
    have = {s.seq: s for s in segments.segments()}
    fetched, problems = 0, []
    for seq, rs in sorted(list_segments(bucket, job).items()):
        if not rs.complete:
            continue
        try:
            if seq in have:
                if have[seq].s3_record() is None:
                    _record_from_bucket(bucket, job, have[seq], rs)
                continue
            problem = _fetch_one(bucket, segments, rs)
        except S3Error as exc:
            problem = exc.reason
        except Exception as exc:
            problem = f"segment {seq:08d} from {bucket.url(rs.manifest_key or '')}: {error_text(exc)}"
        if problem:
            problems.append(problem)
        else:
            fetched += 1
    return fetched, problems


def _fetch_one(bucket: Bucket, segments: SegmentStore, rs: RemoteSegment) -> str | None:
    assert rs.data_key is not None and rs.manifest_key is not None
    dhead, mhead = bucket.head(rs.data_key), bucket.head(rs.manifest_key)
    mversion = (mhead or {}).get("VersionId")
    mversion = mversion if mversion and mversion != "null" else None
    raw_manifest = bucket.body(rs.manifest_key, mversion).read()  # the bytes checked are the bytes kept
    manifest = _parse_manifest(bucket, rs, raw_manifest)
    name = rs.data_key.rsplit("/", 1)[1]
    if manifest.get("file") != name or int(manifest.get("seq", -1)) != rs.seq:
        return f"{bucket.url(rs.manifest_key)}: names {manifest.get('file')}, not {name}"
    tmp = segments.tmp_path(rs.seq)
    digest, size = hashlib.sha256(), 0
    with tmp.open("wb") as out:
        os.fchmod(out.fileno(), 0o600)
        for chunk in bucket.body(rs.data_key, (dhead or {}).get("VersionId")).iter_chunks(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != int(manifest["bytes"]) or digest.hexdigest() != manifest["sha256"]:
        tmp.unlink(missing_ok=True)
        return f"{bucket.url(rs.data_key)}: {size} bytes, sha256 {digest.hexdigest()[:12]}: does not match its manifest"
    final = segments.dir / segment_file_name(rs.seq, name[len(f"{rs.seq:08d}.binlog") :])
    os.replace(tmp, final)
    replace_private_file(segments.dir / f"{rs.seq:08d}{MANIFEST_SUFFIX}", raw_manifest)
    fsync_dir(segments.dir)
    seg = Segment(rs.seq, final, manifest)
    _write_record(seg, {
        "bucket": bucket.name, "key": rs.data_key, "versions": _versions(seg, dhead, mhead), "lock": _lock_of(dhead),
        "checksums": {name: str((dhead or {}).get("ChecksumSHA256") or "")},
        "copied_at": None, "fetched_at": iso(datetime.now(UTC)),
    })  # fmt: skip
    return None


def _record_from_bucket(bucket: Bucket, job: str, seg: Segment, rs: RemoteSegment) -> None:
    """A local segment whose `.s3.json` is lost: when the bucket's current objects pass the copy's check
    (size, sha256, S3's checksum of the local bytes), the record is written again from their HEADs; else
    it stays pending and is shipped anew."""
    assert rs.data_key is not None and rs.manifest_key is not None
    if seg.manifest.get("unreadable") or check_segment(seg):
        return
    dhead, mhead = bucket.head(rs.data_key), bucket.head(rs.manifest_key)
    if dhead is None or mhead is None:
        return
    size, digest = int(seg.manifest["bytes"]), str(seg.manifest["sha256"])
    found, reported = bucket.check_object(rs.data_key, size, digest, file_checksum(seg.path, size, digest),
                                          dhead.get("VersionId") if dhead.get("VersionId") != "null" else None)
    data = seg.manifest_path.read_bytes()
    mdigest = hashlib.sha256(data).hexdigest()
    more, mreported = bucket.check_object(rs.manifest_key, len(data), mdigest, b64_sha256_of_hex(mdigest),
                                          mhead.get("VersionId") if mhead.get("VersionId") != "null" else None)
    if found or more:
        return
    _write_record(seg, {
        "bucket": bucket.name, "key": rs.data_key, "versions": _versions(seg, dhead, mhead), "lock": _lock_of(dhead),
        "checksums": {seg.path.name: reported, seg.manifest_path.name: mreported},
        "copied_at": None, "recorded_at": iso(datetime.now(UTC)),
    })  # fmt: skip


def _versions(seg: Segment, dhead: dict[str, Any] | None, mhead: dict[str, Any] | None) -> dict[str, str]:
    return {k: str(h["VersionId"]) for k, h in ((seg.path.name, dhead), (seg.manifest_path.name, mhead))
            if h and h.get("VersionId") and h["VersionId"] != "null"}  # fmt: skip


def _lock_of(head: dict[str, Any] | None) -> dict[str, str] | None:
    if not head or not head.get("ObjectLockMode") or not head.get("ObjectLockRetainUntilDate"):
        return None
    until = head["ObjectLockRetainUntilDate"]
    when = until if isinstance(until, datetime) else datetime.fromisoformat(str(until).replace("Z", "+00:00"))
    return {"mode": str(head["ObjectLockMode"]), "until": iso(when)}


def segment_locked_until(bucket: Bucket, job: str, seq: int, now: datetime) -> datetime | None:
    """When the last Object Lock on any version of the segment's objects expires (None: none left)."""
    versions = list_versions(bucket.client, bucket.name, segment_key(bucket, job, f"{seq:08d}."))
    read_locks(bucket.client, bucket.name, versions)
    return locked_until(versions, now)


def delete_segment(bucket: Bucket, job: str, seq: int) -> list[str]:
    """Every version of the segment's objects by VersionId, manifest first; returns refused deletions."""
    versions = list_versions(bucket.client, bucket.name, segment_key(bucket, job, f"{seq:08d}."))
    return delete_versions(bucket.client, bucket.name, versions, f"{seq:08d}{MANIFEST_SUFFIX}")

