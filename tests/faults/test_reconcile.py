"""Commit and catalog can disagree: the catalog write after the rename fails. The next run (or `status`)
gives the committed backup its row and queues its S3 copy; reconciling never deletes anything."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.store.catalog import Catalog
from tests.conftest import run_cli


def test_a_backup_committed_without_its_row_is_reconciled_and_shipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s3_env: MotoS3
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
    real = Catalog.record_backup

    def disk_full(self: Catalog, backup: Any, s3_state: str = "none") -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Catalog, "record_backup", disk_full)
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 1 and "disk is full" in err
    [committed] = [p for p in (tmp_path / "etc" / "store" / "site").iterdir() if not p.name.startswith(".")]
    monkeypatch.setattr(Catalog, "record_backup", real)

    rc, out, _ = run_cli(capsys, "--config", cfg, "status", "--json")
    db = sqlite3.connect(tmp_path / "etc" / "state" / "catalog.sqlite")
    try:
        rows = dict(db.execute("SELECT backup_id, s3_state FROM backups").fetchall())
    finally:
        db.close()
    assert rows == {committed.name: "pending"}, "status reconciles: the committed backup is known and queued"

    (src / "b.txt").write_text("b\n")
    rc, out, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"b/site/{committed.name}/manifest.json" in keys, "the reconciled backup was shipped by the next run"
    rc, out, _ = run_cli(capsys, "--config", cfg, "list", "--json")
    assert {r["backup_id"]: r["s3"] for r in json.loads(out)}[committed.name] == "copied"
    assert committed.is_dir()
