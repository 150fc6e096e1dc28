"""A backup directory whose manifest is missing or truncated is shown as broken by `list`, fails `verify`
(exit 1), never counts as verified for retention, and is never deleted; other directories are not backups."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.lab.content import write_config
from backupd.store.backups import parse_backup_id
from tests.conftest import run_cli, wait_for


def _three_backups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[Path]]:
    src = tmp_path / "src"
    src.mkdir()
    jobs = {"site": {"type": "files", "source": f"{src}/", "schedule": "@daily"}}
    cfg = write_config(tmp_path / "etc", jobs)  # no retention yet: all three are kept
    for i in range(3):
        (src / f"f{i}.txt").write_text(f"version {i}\n")
        rc, _, err = run_cli(capsys, "--config", str(cfg), "run", "site")
        assert rc == 0, err
    dirs = sorted(p for p in (cfg.parent / "store" / "site").iterdir() if not p.name.startswith("."))
    write_config(tmp_path / "etc", jobs, retention={"default": {"keep_last": 1}})
    return cfg, dirs


def test_broken_manifests_are_listed_fail_verify_and_are_never_the_verified_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, dirs = _three_backups(tmp_path, capsys)
    assert len(dirs) == 3
    oldest, middle, newest = dirs
    manifest = newest / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated
    (cfg.parent / "store" / "site" / "binlog").mkdir()  # not a backup: never listed

    # retention (keep_last = 1), before any verify has looked at it: the broken newest backup is not "the
    # newest verified one", so the policy keeps the middle one too, deletes only the oldest, and never the
    # broken one. Runs in one second get ids a second apart, ahead of the clock: wait until none is "dated after now"
    wait_for(lambda: datetime.now(UTC) > parse_backup_id(newest.name) + timedelta(seconds=1), timeout=10)
    rc, out, err = run_cli(capsys, "--config", str(cfg), "prune")
    assert rc == 0, err
    assert newest.is_dir() and middle.is_dir() and not oldest.exists()
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "list", "--json")
    rows = json.loads(out)
    assert [r["backup_id"] for r in rows] == [middle.name, newest.name]
    assert [r["backup_id"] for r in rows if r["verified"]] == [middle.name]
    row = rows[-1]
    assert row["backup_id"] == newest.name and row["verified"] is False and "unreadable" in row["broken"]
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "list")
    assert "BROKEN" in out and "binlog" not in out

    rc, out, err = run_cli(capsys, "--config", str(cfg), "verify")
    assert rc == 1 and f"site/{newest.name}: BAD" in out and "manifest.json" in err

    manifest.unlink()
    rc, out, err = run_cli(capsys, "--config", str(cfg), "verify", "site")
    assert rc == 1 and "manifest.json is missing" in out

    rc, _, err = run_cli(capsys, "--config", str(cfg), "restore", "site", "--backup", newest.name, "--to",
                         str(tmp_path / "restored"))
    assert rc != 0 and "Traceback" not in err
