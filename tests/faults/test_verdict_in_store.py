"""A failed verification lives in the store (and beside the S3 copy), so `catalog rebuild` and
`catalog rebuild --from-s3` never turn a backup found bad back into a verified one; restore and retention
read it, and a later good verification clears it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from tests.conftest import run_cli


def _job(tmp_path: Path, settings: dict[str, Any] | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.php").write_text("<?php echo 'hello';\n")
    jobs = {"site": {"type": "files", "source": f"{src}/", "schedule": "@daily"}}
    return write_config(tmp_path / "etc", jobs, settings=settings)


def _list(capsys: pytest.CaptureFixture[str], cfg: Path) -> dict[str, dict[str, Any]]:
    rc, out, err = run_cli(capsys, "--config", str(cfg), "list", "--json")
    assert rc == 0, err
    return {r["backup_id"]: r for r in json.loads(out)}


def _two_backups_newest_flipped(capsys: pytest.CaptureFixture[str], cfg: Path) -> tuple[str, str, Path, bytes]:
    for i in range(2):
        (cfg.parent.parent / "src" / f"page{i}.html").write_text(f"<p>{i}</p>\n")
        rc, _, err = run_cli(capsys, "--config", str(cfg), "run", "site")
        assert rc == 0, err
    older, newest = sorted(_list(capsys, cfg))
    art = next((cfg.parent / "store" / "site" / newest).glob("files.tar*"))
    original = art.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    return older, newest, art, original


def test_failed_verify_survives_catalog_rebuild_and_a_good_one_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _job(tmp_path)
    older, newest, art, original = _two_backups_newest_flipped(capsys, cfg)
    rc, _, err = run_cli(capsys, "--config", str(cfg), "verify")
    assert rc == 1 and newest in err
    verdict = json.loads((cfg.parent / "store" / "site" / newest / "verification.json").read_text())
    assert verdict["local"]["ok"] is False and verdict["local"]["level"] == "full" and verdict["local"]["problems"]

    rc, _, err = run_cli(capsys, "--config", str(cfg), "catalog", "rebuild")
    assert rc == 0, err
    rows = _list(capsys, cfg)
    assert rows[newest]["verified"] is False and rows[older]["verified"] is True
    # restore without --backup takes the newest backup that is still verified
    rc, out, err = run_cli(capsys, "--config", str(cfg), "restore", "site", "--to", str(tmp_path / "r"))
    assert rc == 0 and f"site/{older}" in out, err

    art.write_bytes(original)  # repaired: the next verify clears the verdict
    rc, _, err = run_cli(capsys, "--config", str(cfg), "verify")
    assert rc == 0, err
    run_cli(capsys, "--config", str(cfg), "catalog", "rebuild")
    assert _list(capsys, cfg)[newest]["verified"] is True


def test_rebuild_from_s3_keeps_a_failed_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: MotoS3
) -> None:
    bucket = f"bk-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(bucket)
    s3 = {"enabled": True, "bucket": bucket, "prefix": "b/", "endpoint_url": s3_env.endpoint_url, "region": "us-east-1"}
    cfg = _job(tmp_path, {"s3": s3})
    older, newest, _, _ = _two_backups_newest_flipped(capsys, cfg)
    rc, _, err = run_cli(capsys, "--config", str(cfg), "verify")
    assert rc == 1 and "verdict not copied" not in err
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"b/site/{newest}/verification.json" in keys

    # the backup machine is lost: only the bucket is left
    shutil.rmtree(cfg.parent / "store")
    (cfg.parent / "state" / "catalog.sqlite").unlink()
    rc, _, err = run_cli(capsys, "--config", str(cfg), "catalog", "rebuild", "--from-s3")
    assert rc == 0, err
    db = sqlite3.connect(cfg.parent / "state" / "catalog.sqlite")
    try:
        verified = dict(db.execute("SELECT backup_id, verified FROM backups WHERE job='site'").fetchall())
    finally:
        db.close()
    assert verified == {older: 1, newest: 0}
