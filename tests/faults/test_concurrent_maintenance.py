"""`verify --s3` and `catalog rebuild` beside a running job: neither aborts the run's in-flight S3 upload
nor rewrites catalog rows under it. A held job lock stands in for the running job (it is what a run holds)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.store.locks import job_lock
from tests.conftest import run_cli


def test_verify_s3_and_rebuild_leave_a_running_job_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = f"bk-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    s3 = {"enabled": True, "bucket": bucket, "prefix": "b/", "endpoint_url": s3_env.endpoint_url,
          "region": "us-east-1"}
    cfg = str(write_config(tmp_path / "etc", {"site": {"type": "files", "source": f"{src}/",
                                                        "schedule": "@daily"}}, settings={"s3": s3}))
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err
    state = tmp_path / "etc" / "state"
    db = sqlite3.connect(state / "catalog.sqlite")
    with db:
        db.execute("UPDATE backups SET s3_state='pending'")  # a copy that still has to be (re)made
    db.close()

    client = s3_env.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="b/site/20991231T000000Z/files.tar.zst")
    with job_lock(state, "site"):  # the job is running, its upload in flight
        rc, out, err = run_cli(capsys, "--config", cfg, "verify", "--s3")
        assert "skipped" in out and "the job is running" in out
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["UploadId"] for u in uploads] == [upload["UploadId"]], "verify --s3 aborted the run's upload"

        rc, _, err = run_cli(capsys, "--config", cfg, "catalog", "rebuild")
        assert rc == 75 and "site" in err and "running" in err
    db = sqlite3.connect(state / "catalog.sqlite")
    try:
        assert db.execute("SELECT s3_state FROM backups").fetchall() == [("pending",)], "rebuild changed nothing"
    finally:
        db.close()
    rc, out, err = run_cli(capsys, "--config", cfg, "verify", "--s3")  # the job ended: now the copy is made
    assert rc == 0 and "copied, ok" in out, err
