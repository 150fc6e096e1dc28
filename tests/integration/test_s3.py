"""S3 copies against moto's standalone server over HTTP, checked with a second, independent boto3 client.

The job is a real Redis job (scratch master + replica, no SSH); a large multipart copy uses a store backup
laid out by hand, since the copy path does not depend on the source.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from backupd.config import load_config
from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.logs import EventLog
from backupd.scratch.base import free_port
from backupd.scratch.redis import Redis
from backupd.store.backups import Store
from backupd.store.catalog import Catalog
from backupd.store.s3 import MAX_PARTS, MIN_PART, part_size
from backupd.store.s3_sync import ship
from tests.conftest import catalog_backups, run_cli

PREFIX = "backupd/"




def new_bucket(server: MotoS3) -> str:
    name = f"bk-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    return name


def setup(
    tmp_path: Path,
    replica: Redis,
    endpoint: str,
    bucket: str,
    retention: dict[str, Any] | None = None,
    **s3: Any,
) -> str:
    settings = {
        "s3": {
            "enabled": True,
            "bucket": bucket,
            "prefix": PREFIX,
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "storage_class": "STANDARD_IA",
            "sse": "AES256",
            "max_attempts": 3,
            "connect_timeout": 2,
            **s3,
        }
    }
    job = {"type": "redis", "schedule": "@daily", "host": "127.0.0.1", "port": replica.port}
    return str(write_config(tmp_path / "etc", {"site": job}, settings=settings, retention=retention))


def run_ok(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err[-3000:]


def verify_s3(capsys: pytest.CaptureFixture[str], cfg: str) -> tuple[int, str, list[str]]:
    """`verify --s3`: exit code, stdout and the S3 error lines (local verify of Redis backups currently
    reports a manifest stats mismatch of its own, unrelated to S3, so only S3 lines are asserted on)."""
    rc, out, err = run_cli(capsys, "--config", cfg, "verify", "--s3")
    assert "Traceback" not in err
    return rc, out, [x for x in err.splitlines() if x.startswith("backupd: verify --s3")]


def local_backups(tmp_path: Path) -> list[Any]:
    return Store(tmp_path / "etc" / "store").backups("site")


def remote_ids(server: MotoS3, bucket: str, complete: bool = True) -> set[str]:
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k.split("/")[2] for k in keys if not complete or k.endswith("/manifest.json")}


def test_part_size_stays_under_the_part_limit() -> None:
    for size in (0, 1, MIN_PART, 80 * 2**30, 5 * 2**40):
        ps = part_size(size)
        assert ps >= MIN_PART and ps % 2**20 == 0
        assert -(-size // ps) < MAX_PARTS


def test_run_copies_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    bucket = new_bucket(s3_env)
    cfg = setup(tmp_path, redis_replica, s3_env.endpoint_url, bucket)
    for _ in range(2):
        rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
        assert rc == 0, err
    client = s3_env.client()  # independent of backupd's code
    for b in local_backups(tmp_path):
        assert catalog_backups(tmp_path)[b.backup_id]["s3_state"] == "copied"
        for a in b.manifest["artifacts"]:
            key = f"{PREFIX}site/{b.backup_id}/{a['file']}"
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            assert head["ContentLength"] == a["bytes"]
            assert head["Metadata"]["sha256"] == a["sha256"]
            assert head["StorageClass"] == "STANDARD_IA"
            assert head["ServerSideEncryption"] == "AES256"
            assert head["ChecksumSHA256"]
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == a["sha256"]
        manifest = client.get_object(Bucket=bucket, Key=f"{PREFIX}site/{b.backup_id}/manifest.json")["Body"].read()
        assert json.loads(manifest)["backup_id"] == b.backup_id
    rc, out, errs = verify_s3(capsys, cfg)
    assert errs == []
    assert out.count(": checked, ok") == 2


def test_multipart_copy_is_checked_part_by_part(tmp_path: Path, s3_env: MotoS3) -> None:
    bucket = new_bucket(s3_env)
    settings = {"s3": {"enabled": True, "bucket": bucket, "prefix": PREFIX, "endpoint_url": s3_env.endpoint_url}}
    cfg = load_config(write_config(tmp_path / "etc", {}, settings=settings))
    d = tmp_path / "etc" / "store" / "big" / "20260101T000000Z"
    d.mkdir(parents=True)
    data = os.urandom(2 * MIN_PART + 12345)
    (d / "big.bin").write_bytes(data)
    art = {"name": "big", "file": "big.bin", "format": "raw", "bytes": len(data), "raw_bytes": len(data),
           "sha256": hashlib.sha256(data).hexdigest(), "verification": {"ok": True}}  # fmt: skip
    manifest = {"job": "big", "backup_id": d.name, "started_at": "2026-01-01T00:00:00Z", "verified": True,
                "artifacts": [art]}  # fmt: skip
    (d / "manifest.json").write_text(json.dumps(manifest))
    catalog = Catalog(tmp_path / "etc" / "state")
    try:
        b = Store(tmp_path / "etc" / "store").backups("big")[0]
        catalog.record_backup(b, s3_state="pending")
        assert ship(cfg, "big", b, catalog, EventLog("json", quiet=True)) == []
        assert catalog.backup("big", d.name)["s3_state"] == "copied"  # type: ignore[index]
    finally:
        catalog.close()
    head = s3_env.client().head_object(Bucket=bucket, Key=f"{PREFIX}big/{d.name}/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 8 MiB, 8 MiB, the rest
    assert head["Metadata"]["sha256"] == art["sha256"]
    assert s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_object_altered_in_bucket_is_caught_and_reshipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    bucket = new_bucket(s3_env)
    cfg = setup(tmp_path, redis_replica, s3_env.endpoint_url, bucket)
    run_ok(capsys, cfg)
    b = local_backups(tmp_path)[0]
    a = b.manifest["artifacts"][0]
    key = f"{PREFIX}site/{b.backup_id}/{a['file']}"
    client = s3_env.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, and the attacker even keeps our sha256 metadata
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata={"sha256": a["sha256"]})
    rc, _, errs = verify_s3(capsys, cfg)
    assert rc == 1
    assert len(errs) == 1 and key in errs[0] and "checksum" in errs[0]
    assert catalog_backups(tmp_path)[b.backup_id]["s3_state"] == "failed"
    # the next run of the job ships the failed copy again (older ones first), then its own
    run_ok(capsys, cfg)
    assert {r["s3_state"] for r in catalog_backups(tmp_path).values()} == {"copied"}
    fixed = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(fixed).hexdigest() == a["sha256"]
    assert verify_s3(capsys, cfg)[2] == []


def test_s3_down_keeps_backups_local_and_retries(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    moto_s3_factory: Callable[..., MotoS3],
    redis_replica: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = moto_s3_factory()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    bucket = new_bucket(server)
    cfg = setup(tmp_path, redis_replica, server.endpoint_url, bucket, retention={"default": {"keep_last": 1}})
    server.stop(keep_dir=True)  # unreachable: connection refused on its port
    for _ in range(2):
        rc, out, err = run_cli(capsys, "--config", cfg, "run", "site")
        assert rc == 0, err  # the local backup is committed all the same
        assert "s3" in out and "Could not connect" in out
    assert len(local_backups(tmp_path)) == 2  # keep_last 1, but neither is in S3 yet
    state = sorted(catalog_backups(tmp_path).values(), key=lambda r: r["backup_id"])
    # the retry of the older copy failed first; the new one was not tried against a dead endpoint
    assert [r["s3_state"] for r in state] == ["failed", "pending"]
    assert "Could not connect" in state[0]["s3_error"]
    rc, out, _ = run_cli(capsys, "--config", cfg, "prune", "--dry-run", "--json")
    assert all("not yet in S3" in r["reasons"] for r in json.loads(out))
    rc, _, errs = verify_s3(capsys, cfg)
    assert rc == 1 and len(errs) == 1 and "Could not connect" in errs[0]
    server.start()  # back on the same port (a fresh, empty server)
    server.create_bucket(bucket)
    run_ok(capsys, cfg)
    assert len(local_backups(tmp_path)) == 1  # now copied: the policy applies
    assert len(remote_ids(server, bucket)) == 3  # both older ones were retried, then the new one


class FlakyProxy:
    """A real HTTP front for moto that answers 500 InternalError to the first `failures` requests."""

    def __init__(self, upstream_port: int, failures: int) -> None:
        self.failures = failures
        self.served_500 = 0
        self.forwarded = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                with lock:
                    fail = proxy.served_500 < proxy.failures
                    proxy.served_500 += fail
                if fail:
                    err = b"<Error><Code>InternalError</Code><Message>flaky</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                with lock:
                    proxy.forwarded += 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_500s_are_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    bucket = new_bucket(s3_env)
    proxy = FlakyProxy(s3_env.port, failures=2)
    try:
        cfg = setup(tmp_path, redis_replica, f"http://127.0.0.1:{proxy.port}", bucket, max_attempts=4)
        rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
        assert rc == 0, err
    finally:
        proxy.close()
    assert proxy.served_500 == 2 and proxy.forwarded > 0
    b = local_backups(tmp_path)[0]
    assert catalog_backups(tmp_path)[b.backup_id]["s3_state"] == "copied"
    assert remote_ids(s3_env, bucket) == {b.backup_id}


def test_wrong_credentials_fail_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    moto_s3_factory: Callable[..., MotoS3],
    redis_replica: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = moto_s3_factory()
    bucket = new_bucket(server)
    iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
    iam.create_user(UserName="backupd")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="backupd", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="backupd")["AccessKey"]
    # from here on moto checks every request's credentials (its IAM emulation)
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.request("POST", "/moto-api/reset-auth", body=b"0", headers={"Content-Type": "text/plain"})
    assert conn.getresponse().status == 200
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    cfg = setup(tmp_path, redis_replica, server.endpoint_url, bucket)
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err
    (row,) = catalog_backups(tmp_path).values()
    assert row["s3_state"] == "failed" and "InvalidAccessKeyId" in row["s3_error"]
    rc, _, errs = verify_s3(capsys, cfg)
    assert rc == 1 and len(errs) == 1 and "InvalidAccessKeyId" in errs[0]
    # the same bucket answers the right key (moto's signature check rejects boto3's checksum-trailer
    # uploads even with a valid key, so the positive side is a plain request)
    good = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
    assert good.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing was written with bad keys


def test_missing_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    cfg = setup(tmp_path, redis_replica, s3_env.endpoint_url, "no-such-bucket-here")
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err
    (row,) = catalog_backups(tmp_path).values()
    assert row["s3_state"] == "failed" and "NoSuchBucket" in row["s3_error"]
    rc, _, errs = verify_s3(capsys, cfg)
    assert rc == 1 and len(errs) == 1 and "NoSuchBucket" in errs[0]
    rc, _, err = run_cli(capsys, "--config", cfg, "prune")
    assert rc == 1 and "NoSuchBucket" in err and "Traceback" not in err
    assert len(local_backups(tmp_path)) == 1


def test_s3_retention_applies_to_the_bucket_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    bucket = new_bucket(s3_env)
    client = s3_env.client()
    # a copy the catalog knows nothing about (e.g. from before a rebuild), complete with its manifest
    orphan = "20200101T000000Z"
    client.put_object(Bucket=bucket, Key=f"{PREFIX}site/{orphan}/dump.rdb.zst", Body=b"old")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}site/{orphan}/manifest.json", Body=b"{}")
    # an interrupted copy: objects but no manifest -> never counted, never deleted
    client.put_object(Bucket=bucket, Key=f"{PREFIX}site/20200102T000000Z/dump.rdb.zst", Body=b"half")
    retention = {"default": {"keep_last": 10}, "s3": {"default": {"keep_last": 2}}}
    cfg = setup(tmp_path, redis_replica, s3_env.endpoint_url, bucket, retention=retention)
    for _ in range(3):
        run_ok(capsys, cfg)
    ids = sorted(b.backup_id for b in local_backups(tmp_path))
    assert len(ids) == 3  # local policy keeps 10
    assert remote_ids(s3_env, bucket) == set(ids[-2:])
    assert "20200102T000000Z" in remote_ids(s3_env, bucket, complete=False)
    state = catalog_backups(tmp_path)
    assert state[ids[0]]["s3_state"] == "pruned"
    _rc, out, _ = run_cli(capsys, "--config", cfg, "prune", "--dry-run", "--json")
    s3_rows = {r["backup_id"]: r for r in json.loads(out) if r["where"] == "s3"}
    assert s3_rows["20200102T000000Z"]["keep"] and "uncommitted" in s3_rows["20200102T000000Z"]["reasons"][0]
    assert "newest verified" in s3_rows[ids[-1]]["reasons"]


def test_catalog_rebuild_from_s3_after_losing_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3, redis_replica: Redis
) -> None:
    import shutil

    bucket = new_bucket(s3_env)
    cfg = setup(tmp_path, redis_replica, s3_env.endpoint_url, bucket)
    for _ in range(2):
        run_ok(capsys, cfg)
    ids = {b.backup_id for b in local_backups(tmp_path)}
    shutil.rmtree(tmp_path / "etc" / "store")
    shutil.rmtree(tmp_path / "etc" / "state")
    rc, out, err = run_cli(capsys, "--config", cfg, "catalog", "rebuild", "--from-s3")
    assert rc == 0, err
    assert "0 backups from" in out and "2 from s3://" in out
    state = catalog_backups(tmp_path)
    assert set(state) == ids
    assert all(r["s3_state"] == "copied" and r["path"].startswith("s3://") for r in state.values())
    rc, out, errs = verify_s3(capsys, cfg)
    assert errs == [] and out.count("checked, ok") == 2
