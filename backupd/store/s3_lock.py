"""S3 Object Lock and versions: the lock each upload carries, checking it on HEAD, the bucket's lock
configuration, and every version a backup's deletion must remove (docs/s3-object-lock.md).

A locked bucket is versioned, so a later PUT under a backup's key adds a version and a delete by key only
adds a delete marker: the data stays, locked and billed. So each upload's VersionId is recorded, reads name
it, and deletions remove each version by id, never before its retain-until date. Times come from a Clock
passed down, so the tests move past a lock's date instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from backupd.settings import Config, S3Cfg
from backupd.store.s3_base import S3Error, error_text

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SLACK = timedelta(seconds=1)  # S3 keeps retain-until to the millisecond, some servers to the second


class NoObjectLock(S3Error):
    """`object_lock` is set but the bucket cannot hold locked objects: every copy would fail the same way."""


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock that says what it is told (tests, and a prune planned for a given time)."""

    at: datetime

    def now(self) -> datetime:
        return self.at


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    """A datetime from botocore (already parsed) or from our records (ISO 8601); None when absent."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Lock:
    """The Object Lock one upload was given: mode (S3's spelling) and retain-until date."""

    mode: str  # COMPLIANCE | GOVERNANCE
    until: datetime

    def args(self) -> dict[str, Any]:
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.until}

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "until": iso(self.until)}

    @staticmethod
    def from_dict(data: object) -> Lock | None:
        if not isinstance(data, dict):
            return None
        until = parse_time(data.get("until"))
        mode = data.get("mode")
        return Lock(str(mode), until) if mode and until else None


def new_lock(cfg: S3Cfg, now: datetime) -> Lock | None:
    """The lock for an upload starting at `now`: `object_lock_days` from now (whole seconds)."""
    if cfg.object_lock == "none":
        return None
    until = (now + timedelta(days=cfg.object_lock_days)).astimezone(UTC).replace(microsecond=0)
    return Lock(cfg.object_lock.upper(), until)


def lock_problems(url: str, head: dict[str, Any], expected: Lock) -> list[str]:
    """What is wrong with an object's lock as HEAD reports it: missing, another mode, or shorter."""
    mode = head.get("ObjectLockMode")
    until = parse_time(head.get("ObjectLockRetainUntilDate"))
    if not mode or until is None:
        return [f"{url}: no Object Lock (expected {expected.mode} until {iso(expected.until)})"]
    problems = []
    if mode != expected.mode:
        problems.append(f"{url}: Object Lock mode {mode} != expected {expected.mode}")
    if until < expected.until - SLACK:
        problems.append(f"{url}: locked until {iso(until)}, before the {iso(expected.until)} it was uploaded with")
    return problems


def require_lock_enabled(client: S3Client, bucket: str, mode: str) -> None:
    """GetObjectLockConfiguration: one clear line when the bucket cannot hold locked objects."""
    from botocore.exceptions import ClientError

    try:
        resp = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
            raise S3Error(f"checking Object Lock on bucket {bucket}: {error_text(exc)}") from exc
        resp = {}  # type: ignore[typeddict-item]
    except Exception as exc:  # network and credential errors: one line
        raise S3Error(f"checking Object Lock on bucket {bucket}: {error_text(exc)}") from exc
    if resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise NoObjectLock(
            f"s3.object_lock = {mode!r} but bucket {bucket} does not have Object Lock enabled"
            " (enable it on the bucket, or set object_lock = \"none\")"
        )


# ------------------------------------------------------------------ versions and their deletion


@dataclass
class ObjVersion:
    """One version (or delete marker) of an object; `lock_until` is filled by `read_locks`."""

    key: str
    version_id: str | None  # None: an unversioned bucket's only version ("null")
    delete_marker: bool = False
    lock_until: datetime | None = None


def list_versions(client: S3Client, bucket: str, prefix: str) -> list[ObjVersion]:
    """Every version and delete marker under `prefix` (a backup's folder, ending in "/")."""
    out: list[ObjVersion] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            vid = v.get("VersionId")
            out.append(ObjVersion(v["Key"], vid if vid and vid != "null" else None))
        for m in page.get("DeleteMarkers", []):
            vid = m.get("VersionId")
            out.append(ObjVersion(m["Key"], vid if vid and vid != "null" else None, delete_marker=True))
    return out


def read_locks(client: S3Client, bucket: str, versions: Iterable[ObjVersion]) -> None:
    """HEAD each version for its retain-until date (needs s3:GetObjectRetention, as on AWS)."""
    for v in versions:
        if v.delete_marker:
            continue
        args: dict[str, Any] = {"Bucket": bucket, "Key": v.key}
        if v.version_id:
            args["VersionId"] = v.version_id
        head = client.head_object(**args)
        v.lock_until = parse_time(head.get("ObjectLockRetainUntilDate"))


def locked_until(versions: Iterable[ObjVersion], now: datetime) -> datetime | None:
    """The last retain-until date still ahead of `now`, or None when nothing is locked any more."""
    ahead = [v.lock_until for v in versions if v.lock_until is not None and v.lock_until > now]
    return max(ahead) if ahead else None


def delete_versions(client: S3Client, bucket: str, versions: list[ObjVersion], first: str) -> list[str]:
    """Delete each version by its id, the keys ending in `first` (the manifest) first, so an interrupted
    delete leaves an incomplete backup. Returns the deletions S3 refused as AccessDenied (a lock we did
    not know of, or a key that may not delete): warnings for the caller. Other errors raise S3Error.

    Never sends BypassGovernanceRetention: an unexpired lock is waited out, whatever its mode."""
    head = [v for v in versions if v.key.endswith("/" + first)]
    rest = [v for v in versions if not v.key.endswith("/" + first)]
    refused: list[str] = []
    for batch in (head, *[rest[i : i + 1000] for i in range(0, len(rest), 1000)]):
        if not batch:
            continue
        objects: list[Any] = [
            {"Key": v.key, "VersionId": v.version_id} if v.version_id else {"Key": v.key} for v in batch
        ]
        resp = client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        for e in resp.get("Errors", []):
            what = f"s3://{bucket}/{e.get('Key', '?')}" + (f" version {e['VersionId']}" if e.get("VersionId") else "")
            if e.get("Code") == "AccessDenied":
                refused.append(f"delete {what} refused: {e.get('Message') or 'AccessDenied'}")
                continue
            raise S3Error(f"delete {what}: {e.get('Code')}: {e.get('Message')}")
        if refused and batch is head:
            break  # the manifest stays, so the backup stays complete: leave the rest for the next prune
    return refused


# ------------------------------------------------------------------ retention against the lock

_SIMULATED = 1000  # runs of one job simulated from object_lock_days ago (fewer for a frequent job: enough)


def retention_warnings(config: Config, now: datetime | None = None) -> list[str]:
    """Jobs whose S3 retention would delete copies younger than `object_lock_days`: simulate the job's
    schedule over that many days and plan its S3 retention. Such deletions are not errors (the prune waits
    for each lock), but the copies stay, and are billed, until their lock expires."""
    cfg = config.settings.s3
    if not cfg.enabled or cfg.object_lock == "none":
        return []
    from backupd.schedule import Schedule
    from backupd.store.retention import Backup, Policy, plan

    now = now or datetime.now(UTC)
    start = now - timedelta(days=cfg.object_lock_days)
    out = []
    for name, job in sorted(config.jobs.items()):
        keep = config.retention.s3_for(name).model_dump()
        if not any(keep.values()):
            continue  # an empty policy keeps everything
        try:
            sched = Schedule.parse(job.schedule, config.job_timezone(name))
            gap = max(sched.interval_hint(start).total_seconds(), 1.0)
            count = min(_SIMULATED, int(cfg.object_lock_days * 86400 / gap) + 2)
            runs = [t for t in sched.iter_after(start, count) if t <= now]
        except (ValueError, StopIteration):
            continue
        policy = Policy(**keep)
        backups = [Backup(f"sim-{i}", t, True, True, False, False) for i, t in enumerate(runs)]
        early = [d for d in plan(backups, policy, now, config.job_timezone(name)) if not d.keep]
        if early:
            out.append(
                f"job {name}: S3 retention deletes copies younger than s3.object_lock_days ="
                f" {cfg.object_lock_days} ({len(early)} of {len(runs)} simulated runs): each such deletion"
                " waits for its lock to expire, and the copy is billed until then"
            )
    return out
