"""Failures that used to leave no trace: an unexpected exception in one job, a store that cannot be created.

Each failure is recorded in the catalog with its type and message, emitted as a `failed` event, shown by
`backupd status`, and `run --all` goes on with the other jobs and exits 1.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.sources.files import FilesSource
from tests.conftest import run_cli


def _files_jobs(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    jobs = {n: {"type": "files", "source": f"{src}/", "schedule": "@daily"} for n in ("alpha", "beta")}
    return write_config(tmp_path / "etc", jobs, settings={"logging": {"format": "json"}})


def _runs(cfg: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(cfg.parent / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM runs ORDER BY id"))
    finally:
        db.close()


def test_internal_error_is_recorded_and_run_all_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _files_jobs(tmp_path)
    real_dump = FilesSource.dump

    def buggy_dump(self: FilesSource, job: Any, ctx: Any) -> dict[str, Any]:  # a bug in the first job only
        if ctx.job_name == "alpha":
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return real_dump(self, job, ctx)

    monkeypatch.setattr(FilesSource, "dump", buggy_dump)
    rc, out, err = run_cli(capsys, "--config", str(cfg), "run", "--all")
    assert rc == 1
    runs = {r["job"]: r for r in _runs(cfg)}
    assert runs["alpha"]["outcome"] == "failed" and "TypeError" in runs["alpha"]["error"]
    assert "unsupported operand" in runs["alpha"]["error"] and runs["alpha"]["step"] == "dump"
    assert runs["beta"]["outcome"] == "ok", "run --all must go on with the other jobs"
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(e["event"] == "failed" and e["job"] == "alpha" and "TypeError" in e["error"] for e in events)
    assert "TypeError" in err and "Traceback" not in err
    assert not list((cfg.parent / "store" / "alpha").glob(".partial-*"))
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--json")
    alpha = next(s for s in json.loads(out) if s["job"] == "alpha")
    assert alpha["last_run_outcome"] == "failed" and "TypeError" in alpha["last_run_error"]


def test_store_that_cannot_be_created_is_a_recorded_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _files_jobs(tmp_path)
    blocker = tmp_path / "etc" / "store"
    blocker.write_text("a file where the store's directory should be\n")
    rc, _, err = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 1 and "Traceback" not in err and "job alpha" in err
    [run] = _runs(cfg)
    assert run["outcome"] == "failed" and run["step"] == "start" and run["finished_at"], "never left 'running'"
