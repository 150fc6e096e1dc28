"""S3 Object Lock against moto's standalone server: buckets created with Object Lock enabled (and one
without), checked with a second, independent boto3 client. The job is a local files job (no servers); the
copies that need a shifted clock are shipped through `ship` with a Bucket given that clock.

moto enforces retention on a DeleteObject by VersionId with its real clock, so the prune test uploads with a
clock set one lock period minus WINDOW in the past: the lock is live for WINDOW real seconds, which shows
the plan and the refusal before the date and the deletion after it without waiting a day.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.config import load_config
from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.logs import EventLog
from backupd.store.backups import Store, StoredBackup
from backupd.store.catalog import Catalog
from backupd.store.prune import prune_jobs
from backupd.store.s3 import Bucket
from backupd.store.s3_base import MIN_PART
from backupd.store.s3_lock import FixedClock
from backupd.store.s3_sync import ship
from tests.conftest import catalog_backups, run_cli

PREFIX = "ol/"
WINDOW = timedelta(seconds=12)  # how long the prune test's lock is live for real


def new_bucket(server: MotoS3, object_lock: bool = True) -> str:
    name = f"ol-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name, object_lock=object_lock)
    return name


def write(tmp_path: Path, endpoint: str, bucket: str, *, enabled: bool = True, retention: dict[str, Any] | None = None,
          **s3: Any) -> Path:  # fmt: skip
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "index.php").write_text("<?php echo 'hello';\n")
    settings = {"s3": {"enabled": enabled, "bucket": bucket, "prefix": PREFIX, "endpoint_url": endpoint,
                       "region": "us-east-1", "max_attempts": 2, "object_lock": "compliance",
                       "object_lock_days": 30, **s3}}  # fmt: skip
    jobs = {"site": {"type": "files", "source": f"{src}/", "schedule": "@daily"}}
    return write_config(tmp_path / "etc", jobs, settings=settings, retention=retention)


def cli(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, str, str]:
    rc, out, err = run_cli(capsys, "--config", str(cfg), *args)
    assert "Traceback" not in err, err
    return rc, out, err


def backups(tmp_path: Path) -> list[StoredBackup]:
    return Store(tmp_path / "etc" / "store").backups("site")


def versions(server: MotoS3, bucket: str, prefix: str = PREFIX) -> list[dict[str, Any]]:
    resp = server.client().list_object_versions(Bucket=bucket, Prefix=prefix)
    return [*resp.get("Versions", []), *resp.get("DeleteMarkers", [])]


def copy_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {bid: json.loads(r["s3_copy"] or "null") for bid, r in catalog_backups(tmp_path).items()}


def test_copies_are_locked_and_their_versions_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env)
    cfg = write(tmp_path, s3_env.endpoint_url, bucket)
    before = datetime.now(UTC)
    rc, _, err = cli(capsys, cfg, "run", "site")
    assert rc == 0, err
    (b,) = backups(tmp_path)
    record = copy_records(tmp_path)[b.backup_id]
    files = [a["file"] for a in b.manifest["artifacts"]] + ["manifest.json"]
    assert set(record["versions"]) == set(files)
    assert record["lock"]["mode"] == "COMPLIANCE"
    client = s3_env.client()
    for name in [*files, "verification.json"]:
        head = client.head_object(Bucket=bucket, Key=f"{PREFIX}site/{b.backup_id}/{name}", ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "COMPLIANCE", name
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=30) - timedelta(seconds=2) <= until <= datetime.now(UTC) + timedelta(days=30)
        assert head["ChecksumSHA256"]
        if name in record["versions"]:
            assert head["VersionId"] == record["versions"][name]
    # the store holds the same record (the truth a rebuild reads), beside the copy too
    local = json.loads((b.path / "verification.json").read_text())["s3"]
    assert local["versions"] == record["versions"] and local["lock"] == record["lock"]
    remote = json.loads(client.get_object(Bucket=bucket, Key=f"{PREFIX}site/{b.backup_id}/verification.json")
                        ["Body"].read())  # fmt: skip
    assert remote["s3"]["versions"] == record["versions"]
    rc, out, err = cli(capsys, cfg, "check-config", "--connect")
    assert rc == 0, err
    assert "Object Lock enabled (compliance, 30 days)" in out
    rc, out, err = cli(capsys, cfg, "verify", "--s3")
    assert rc == 0 and "checked, ok" in out, err


def test_object_lock_on_a_bucket_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env, object_lock=False)
    cfg = write(tmp_path, s3_env.endpoint_url, bucket)
    rc, _, err = cli(capsys, cfg, "check-config", "--connect")
    lines = [x for x in err.splitlines() if "Object Lock" in x]
    assert rc == 1 and len(lines) == 1, err
    assert f"bucket {bucket} does not have Object Lock enabled" in lines[0]
    rc, _, err = cli(capsys, cfg, "run", "site")
    assert rc == 0, err  # the backup is committed; the copy failed and stays pending for the next run
    (row,) = catalog_backups(tmp_path).values()
    assert row["s3_state"] == "failed" and "does not have Object Lock enabled" in row["s3_error"]
    (tmp_path / "src" / "more.html").write_text("<p>more</p>\n")
    rc, _, err = cli(capsys, cfg, "run", "site")
    assert rc == 0, err
    # the retry of the older copy failed first; the new one was not tried against the same bucket
    assert [r["s3_state"] for _, r in sorted(catalog_backups(tmp_path).items())] == ["failed", "pending"]
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing unlocked went up


def test_later_put_does_not_shadow_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env)
    cfg = write(tmp_path, s3_env.endpoint_url, bucket, verify_read_fraction=1.0)
    rc, _, err = cli(capsys, cfg, "run", "site")
    assert rc == 0, err
    (b,) = backups(tmp_path)
    art = b.manifest["artifacts"][0]
    client = s3_env.client()
    # someone with the credentials PUTs over every key: same size, our sha256 metadata, other bytes
    for name in (art["file"], "manifest.json"):
        key = f"{PREFIX}site/{b.backup_id}/{name}"
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0xFF
        meta = client.head_object(Bucket=bucket, Key=key)["Metadata"]
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=meta)
    key = f"{PREFIX}site/{b.backup_id}/{art['file']}"
    assert client.head_object(Bucket=bucket, Key=key)["VersionId"] != copy_records(tmp_path)[b.backup_id][
        "versions"][art["file"]]  # the current version is the intruder's
    rc, out, err = cli(capsys, cfg, "verify", "--s3")
    assert rc == 0 and "checked, ok" in out, err  # HEAD of the recorded versions
    # a full read of the S3 copy (scheduled verify, all of the bytes) reads the recorded version
    rc, out, err = cli(capsys, cfg, "verify", "--scheduled")
    assert rc == 0, err
    assert json.loads((b.path / "verification.json").read_text())["s3"]["ok"] is True
    # restore the local copy from S3: repair downloads the recorded version, not the intruder's
    local = b.path / art["file"]
    original = local.read_bytes()
    local.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    rc, out, err = cli(capsys, cfg, "repair", f"site/{b.backup_id}")
    assert rc == 0, err
    assert local.read_bytes() == original
    # and without the recorded versions the same check reads the intruder's object and fails: the test can fail
    catalog = Catalog(tmp_path / "etc" / "state")
    try:
        catalog.db.execute("UPDATE backups SET s3_copy=NULL")
    finally:
        catalog.close()
    verdict = json.loads((b.path / "verification.json").read_text())
    verdict["s3"].pop("versions")
    (b.path / "verification.json").write_text(json.dumps(verdict))
    rc, _, err = cli(capsys, cfg, "verify", "--s3")
    assert rc == 1 and "checksum" in err


def test_rebuilds_keep_the_version_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env)
    cfg = write(tmp_path, s3_env.endpoint_url, bucket, object_lock="governance")
    for i in range(2):
        (tmp_path / "src" / f"p{i}.html").write_text(f"<p>{i}</p>\n")
        rc, _, err = cli(capsys, cfg, "run", "site")
        assert rc == 0, err
    records = copy_records(tmp_path)
    assert all(r and r["versions"] and r["lock"]["mode"] == "GOVERNANCE" for r in records.values())
    client = s3_env.client()
    for bid in records:  # shadow every manifest: the rebuild from S3 must read the recorded version
        client.put_object(Bucket=bucket, Key=f"{PREFIX}site/{bid}/manifest.json", Body=b"{}")
    for side in ("", "-wal", "-shm"):
        (tmp_path / "etc" / "state" / f"catalog.sqlite{side}").unlink(missing_ok=True)
    rc, _, err = cli(capsys, cfg, "catalog", "rebuild")
    assert rc == 0, err
    assert copy_records(tmp_path) == records  # from the store's verification records
    shutil.rmtree(tmp_path / "etc" / "store")
    shutil.rmtree(tmp_path / "etc" / "state")
    rc, out, err = cli(capsys, cfg, "catalog", "rebuild", "--from-s3")
    assert rc == 0 and "2 from s3://" in out, err
    assert copy_records(tmp_path) == records  # from the verification records beside the copies
    assert all(json.loads(r["manifest"])["backup_id"] == bid for bid, r in catalog_backups(tmp_path).items())
    rc, out, err = cli(capsys, cfg, "verify", "--s3")
    assert rc == 0 and out.count("checked, ok") == 2, err


def test_verify_catches_a_shortened_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env)
    cfg = write(tmp_path, s3_env.endpoint_url, bucket, object_lock="governance")
    rc, _, err = cli(capsys, cfg, "run", "site")
    assert rc == 0, err
    (b,) = backups(tmp_path)
    art = b.manifest["artifacts"][0]["file"]
    vid = copy_records(tmp_path)[b.backup_id]["versions"][art]
    # a governance lock can be shortened by whoever holds s3:BypassGovernanceRetention (never backupd)
    s3_env.client().put_object_retention(
        Bucket=bucket, Key=f"{PREFIX}site/{b.backup_id}/{art}", VersionId=vid, BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
    )  # fmt: skip
    rc, _, err = cli(capsys, cfg, "verify", "--s3")
    uploaded = copy_records(tmp_path)[b.backup_id]["lock"]["until"]
    assert rc == 1 and "locked until" in err and f"before the {uploaded} it was uploaded with" in err, err
    assert catalog_backups(tmp_path)[b.backup_id]["s3_state"] == "failed"


def test_multipart_copy_carries_the_lock_and_part_checksums(tmp_path: Path, s3_env: MotoS3) -> None:
    """Each UploadPart carries its SHA256 checksum and the CreateMultipartUpload the lock (where AWS takes it
    from). moto 5 drops the lock of a multipart upload, as a store without Object Lock support would: the
    copy's HEAD check catches the object without its lock and the copy fails (kept local, retried)."""
    bucket = new_bucket(s3_env)
    cfg = load_config(write(tmp_path, s3_env.endpoint_url, bucket))
    d = tmp_path / "etc" / "store" / "site" / "20260101T000000Z"
    d.mkdir(parents=True)
    data = bytes(range(256)) * ((2 * MIN_PART + 4096) // 256)
    (d / "big.bin").write_bytes(data)
    import hashlib

    art = {"name": "big", "file": "big.bin", "format": "raw", "bytes": len(data), "raw_bytes": len(data),
           "sha256": hashlib.sha256(data).hexdigest(), "verification": {"ok": True}}  # fmt: skip
    (d / "manifest.json").write_text(json.dumps({"job": "site", "backup_id": d.name, "verified": True,
                                                 "started_at": "2026-01-01T00:00:00Z", "artifacts": [art]}))
    sent: list[tuple[str, dict[str, str]]] = []
    bucket_obj = Bucket(cfg.settings.s3)

    def seen(request: Any, event_name: str, **_: Any) -> None:
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
        sent.append((event_name.split(".")[-1], headers))

    bucket_obj.client.meta.events.register("before-send.s3", seen)
    catalog = Catalog(tmp_path / "etc" / "state")
    try:
        b = Store(tmp_path / "etc" / "store").backups("site")[0]
        catalog.record_backup(b, s3_state="pending")
        errors = ship(cfg, "site", b, catalog, EventLog("json", quiet=True), bucket=bucket_obj)
        row = catalog.backup("site", d.name)
    finally:
        catalog.close()
    (create,) = [h for op, h in sent if op == "CreateMultipartUpload"]
    assert create["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert create["x-amz-object-lock-retain-until-date"].startswith(str((datetime.now(UTC) + timedelta(days=30)).year))
    assert create["x-amz-checksum-algorithm"] == "SHA256"
    parts = [h for op, h in sent if op == "UploadPart"]
    assert len(parts) == 3
    for h in parts:  # the checksum in a header, or in the trailer of an aws-chunked body
        assert "x-amz-checksum-sha256" in h or h.get("x-amz-trailer") == "x-amz-checksum-sha256", h
    assert row is not None and row["s3_state"] == "failed"
    assert len(errors) == 1 and "big.bin" in errors[0] and "no Object Lock" in errors[0]


def test_prune_waits_for_the_lock_then_deletes_every_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = new_bucket(s3_env)
    retention = {"s3": {"default": {"keep_last": 1}}}
    cfg_path = write(tmp_path, s3_env.endpoint_url, bucket, enabled=False, retention=retention, object_lock_days=1)
    for i in range(2):
        (tmp_path / "src" / f"p{i}.html").write_text(f"<p>{i}</p>\n")
        rc, _, err = cli(capsys, cfg_path, "run", "site")
        assert rc == 0, err
    write(tmp_path, s3_env.endpoint_url, bucket, retention=retention, object_lock_days=1)
    config = load_config(cfg_path)
    older, newer = backups(tmp_path)
    events = EventLog("json", quiet=True)
    catalog = Catalog(tmp_path / "etc" / "state")
    try:
        assert ship(config, "site", newer, catalog, events) == []
        # the older copy is uploaded by a clock one day minus WINDOW behind: its 1-day lock ends WINDOW from now
        upload_at = datetime.now(UTC) - timedelta(days=1) + WINDOW
        bucket_then = Bucket(config.settings.s3, clock=FixedClock(upload_at))
        assert ship(config, "site", older, catalog, events, bucket=bucket_then) == []
    finally:
        catalog.close()
    until = datetime.fromisoformat(copy_records(tmp_path)[older.backup_id]["lock"]["until"].replace("Z", "+00:00"))
    prefix = f"{PREFIX}site/{older.backup_id}/"
    before = len(versions(s3_env, bucket, prefix))
    assert before >= 3  # artifact(s), manifest, verification record
    # a re-verification puts the verification record again, locked to the copy's date (not 1 day more)
    rc, _, err = cli(capsys, cfg_path, "verify", f"site/{older.backup_id}")
    assert rc == 0, err
    n_versions = len(versions(s3_env, bucket, prefix))
    assert n_versions == before + 1

    # 1. the plan says when: nothing is deleted before the lock expires
    rc, out, err = cli(capsys, cfg_path, "prune", "--dry-run")
    assert rc == 0, err
    line = next(x for x in out.splitlines() if older.backup_id in x and " s3 " in x)
    assert "locked" in line and f"locked until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}" in line

    # 2. a clock that runs ahead: we ask, S3 refuses (the lock is real): a warning, nothing lost
    rows, errors = prune_jobs(config, ["site"], events, now=until + timedelta(seconds=1))
    (row,) = [r for r in rows if r.where == "s3" and r.backup_id == older.backup_id]
    assert errors == [] and row.action == "refused" and row.error is None
    assert row.warning and "refused" in row.warning
    assert len(versions(s3_env, bucket, prefix)) == n_versions
    assert catalog_backups(tmp_path)[older.backup_id]["s3_state"] == "copied"
    rc, out, err = cli(capsys, cfg_path, "prune")  # the real clock: locked, left alone
    assert rc == 0, err
    assert len(versions(s3_env, bucket, prefix)) == n_versions
    assert datetime.now(UTC) < until, f"the steps before took longer than {WINDOW}: the lock expired meanwhile"

    # 3. once the date has passed for real, the next prune deletes every version by its VersionId
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.5)
    rc, out, err = cli(capsys, cfg_path, "prune")
    assert rc == 0, err
    assert versions(s3_env, bucket, prefix) == []  # no version and no delete marker left behind
    assert catalog_backups(tmp_path)[older.backup_id]["s3_state"] == "pruned"
    assert len(versions(s3_env, bucket, f"{PREFIX}site/{newer.backup_id}/")) >= 3  # the kept copy is whole
