"""Local retention through the real CLI: a Redis job (scratch master + replica, no SSH), a real store and
SQLite catalog.

Synthetic histories (hundreds of days) are laid out as real store directories with manifests and indexed
with `catalog rebuild`, because a real run can only produce backups dated now.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.errors import BackupdError
from backupd.lab.content import toml_text, write_config
from backupd.scratch.base import free_port
from backupd.scratch.redis import Redis
from backupd.store.backups import Store, make_backup_id, reading
from backupd.store.locks import job_lock
from tests.conftest import catalog_backups, run_cli


def redis_job(replica: Redis | None) -> dict[str, Any]:
    """A cheap real job; with None it points at a closed port, so the run fails at its first step."""
    port = replica.port if replica is not None else free_port()
    return {"type": "redis", "schedule": "@daily", "host": "127.0.0.1", "port": port}


def setup(
    tmp_path: Path, retention: dict[str, Any] | None = None, tz: str | None = None, replica: Redis | None = None
) -> Path:
    job = redis_job(replica)
    if tz:
        job["timezone"] = tz
    return write_config(tmp_path / "etc", {"site": job}, retention=retention)


def store_ids(tmp_path: Path) -> set[str]:
    d = tmp_path / "etc" / "store" / "site"
    return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.is_dir() else set()


def fake_history(tmp_path: Path, times: list[datetime], files_per_backup: int = 1) -> list[str]:
    """Real store directories with manifests and artifact files, as committed runs leave them."""
    ids = []
    root = tmp_path / "etc" / "store" / "site"
    root.mkdir(parents=True, exist_ok=True)
    for t in times:
        bid = make_backup_id(t)
        d = root / bid
        d.mkdir()
        arts = []
        for i in range(files_per_backup):
            (d / f"part{i}.tar.zst").write_bytes(b"x" * 64)
            arts.append(
                {"name": f"part{i}", "file": f"part{i}.tar.zst", "format": "tar", "bytes": 64, "raw_bytes": 64,
                 "sha256": "0" * 64, "verification": {"ok": True}}
            )  # fmt: skip
        manifest = {"job": "site", "backup_id": bid, "started_at": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "finished_at": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "verified": True, "artifacts": arts}  # fmt: skip
        (d / "manifest.json").write_text(json.dumps(manifest))
        ids.append(bid)
    return ids


def test_run_prunes_after_each_successful_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_replica: Redis
) -> None:
    cfg = str(setup(tmp_path, retention={"default": {"keep_last": 2}}, replica=redis_replica))
    ids = []
    for _ in range(4):
        rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
        assert rc == 0, err
        ids.append(max(store_ids(tmp_path)))
    assert store_ids(tmp_path) == set(ids[-2:])
    rows = catalog_backups(tmp_path)
    for bid in ids[:2]:
        assert rows[bid]["deleted_at"] is not None
        assert rows[bid]["delete_reason"] == "not selected by policy"
    rc, out, _ = run_cli(capsys, "--config", cfg, "list", "--json")
    assert [r["backup_id"] for r in json.loads(out)] == ids[-2:]
    rc, out, _ = run_cli(capsys, "--config", cfg, "prune", "--dry-run", "--json")
    plan = {r["backup_id"]: r for r in json.loads(out)}
    assert rc == 0 and set(plan) == set(ids[-2:])
    assert "newest verified" in plan[ids[-1]]["reasons"] and "last 2" in plan[ids[-1]]["reasons"]


def test_failed_run_never_prunes(tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_replica: Redis) -> None:
    cfg = setup(tmp_path, replica=redis_replica)  # no retention file: keep everything
    for _ in range(3):
        rc, _, err = run_cli(capsys, "--config", str(cfg), "run", "site")
        assert rc == 0, err
    (cfg.parent / "retention.toml").write_text(toml_text({"default": {"keep_last": 1}}))
    job = cfg.parent / "jobs" / "site.toml"
    job.write_text(toml_text(redis_job(None)))
    rc, _, err = run_cli(capsys, "--config", str(cfg), "run", "site")
    assert rc == 1 and "job site" in err
    assert len(store_ids(tmp_path)) == 3  # the failed run pruned nothing
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "prune")
    assert rc == 0 and "deleted 2 of 3" in out
    assert len(store_ids(tmp_path)) == 1


def test_table_buckets_in_job_timezone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    retention = {"default": {"keep_daily": 3, "keep_monthly": 2}}
    cfg = str(setup(tmp_path, retention=retention, tz="America/New_York"))
    base = datetime.now(UTC).replace(hour=3, minute=30, second=0, microsecond=0) - timedelta(days=1)
    # 03:30 UTC is the evening before in New York: each of these is the newest of a *local* day
    times = [base - timedelta(days=d) for d in range(70)]
    fake_history(tmp_path, times)
    assert run_cli(capsys, "--config", cfg, "catalog", "rebuild")[0] == 0
    rc, out, _ = run_cli(capsys, "--config", cfg, "prune", "--dry-run", "--json")
    assert rc == 0
    rows = json.loads(out)
    kept = [r for r in rows if r["keep"]]
    newest_local = (base.astimezone().astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))).date()
    assert f"daily {newest_local.isoformat()}" in kept[0]["reasons"]
    assert kept[0]["backup_id"] == make_backup_id(times[0])
    assert sum(1 for r in rows if any(x.startswith("daily") for x in r["reasons"])) == 3
    assert sum(1 for r in rows if any(x.startswith("monthly") for x in r["reasons"])) == 2
    assert all(r["reasons"] == ["not selected by policy"] for r in rows if not r["keep"])
    assert len(store_ids(tmp_path)) == 70  # dry run: nothing deleted
    rc, out, _ = run_cli(capsys, "--config", cfg, "prune", "site")
    assert rc == 0 and "daily " in out and "deleted" in out
    assert store_ids(tmp_path) == {r["backup_id"] for r in kept}


def test_prune_takes_the_job_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(setup(tmp_path, retention={"default": {"keep_last": 1}}))
    fake_history(tmp_path, [datetime.now(UTC) - timedelta(days=d) for d in range(1, 4)])
    with job_lock(tmp_path / "etc" / "state", "site"):
        rc, _, err = run_cli(capsys, "--config", cfg, "prune", "site")
    assert rc == 75 and "already running" in err
    assert len(store_ids(tmp_path)) == 3


def test_backup_being_read_by_a_restore_or_drill_is_kept_until_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Timer mode can run a scheduled backup (and its prune) while an operator restores or a drill reads an
    older backup: prune skips the one being read, says why, and deletes it on a later prune."""
    cfg = str(setup(tmp_path, retention={"default": {"keep_last": 1}}))
    ids = fake_history(tmp_path, [datetime.now(UTC) - timedelta(days=d) for d in range(1, 4)])
    assert run_cli(capsys, "--config", cfg, "catalog", "rebuild")[0] == 0
    store = Store(tmp_path / "etc" / "store")
    held = store.find(ids[1], "site")
    assert held is not None
    with reading(held):
        out = subprocess.run(
            [sys.executable, "-m", "backupd", "--config", cfg, "prune", "site"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert store_ids(tmp_path) == {ids[0], ids[1]}, out.stdout + out.stderr
        assert "being read by a restore or drill" in out.stdout + out.stderr
        assert (held.path / "manifest.json").is_file()
    assert catalog_backups(tmp_path)[ids[1]]["deleted_at"] is None
    assert run_cli(capsys, "--config", cfg, "prune", "site")[0] == 0
    assert store_ids(tmp_path) == {ids[0]}
    with pytest.raises(BackupdError, match="deleted"), reading(held):
        pass


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[default]\nkeep_dayly = 7\n", "default.keep_dayly"),
        ("[default]\nkeep_daily = -1\n", "default.keep_daily"),
        ("[s3.jobs.nope]\nkeep_last = 1\n", "s3.jobs.nope"),
    ],
)
def test_bad_retention_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    cfg = setup(tmp_path)
    (cfg.parent / "retention.toml").write_text(text)
    rc, _out, err = run_cli(capsys, "--config", str(cfg), "prune", "--dry-run")
    assert rc == 2
    assert err.count("\n") == 1 and "retention.toml" in err and key in err
    assert "Traceback" not in err


def test_prune_killed_midway_leaves_store_and_catalog_agreeing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = setup(tmp_path, retention={"default": {"keep_last": 5}})
    now = datetime.now(UTC)
    ids = fake_history(tmp_path, [now - timedelta(hours=h) for h in range(1, 301)], files_per_backup=40)
    assert run_cli(capsys, "--config", str(cfg), "catalog", "rebuild")[0] == 0
    keep = set(sorted(ids)[-5:])
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "prune", "site"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while len(store_ids(tmp_path)) > 250 and proc.poll() is None:
        assert time.monotonic() < deadline, "prune never started deleting"
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prune finished before it could be killed: make the history bigger"
    present = store_ids(tmp_path)
    assert 5 < len(present) < 300  # killed half-way
    rows = catalog_backups(tmp_path)
    # the catalog never says deleted for a backup that still exists
    assert all(rows[b]["deleted_at"] is None for b in present)
    # what `list` shows is exactly the complete backups in the store; the good ones are intact
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "list", "site", "--json")
    listed = {r["backup_id"] for r in json.loads(out)}
    assert listed == present and keep <= listed
    for b in keep:
        assert len(list((tmp_path / "etc" / "store" / "site" / b).iterdir())) == 41
    # at most one backup was between "renamed away" and "catalog updated"
    lagging = [b for b, r in rows.items() if r["deleted_at"] is None and b not in present]
    assert len(lagging) <= 1
    # the next prune (under the lock) finishes the job and reconciles the catalog
    rc, _, err = run_cli(capsys, "--config", str(cfg), "prune", "site")
    assert rc == 0, err
    assert store_ids(tmp_path) == keep
    rows = catalog_backups(tmp_path)
    assert {b for b, r in rows.items() if r["deleted_at"] is None} == keep
    for b in lagging:
        assert rows[b]["delete_reason"].startswith("missing from the store")
