"""An unexpected error in one drill fails that drill with its type and message; the other drills still run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.sources.files import FilesSource
from tests.conftest import run_cli


def test_a_drill_bug_fails_one_drill_and_the_rest_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    jobs = {n: {"type": "files", "source": f"{src}/", "schedule": "@daily"} for n in ("alpha", "beta")}
    cfg = str(write_config(tmp_path / "etc", jobs))
    for n in jobs:
        assert run_cli(capsys, "--config", cfg, "run", n)[0] == 0
    real = FilesSource.drill

    def buggy(self: FilesSource, job: Any, backup: Any, ctx: Any) -> Any:
        if backup.job == "alpha":
            raise KeyError("tree_sha256")
        return real(self, job, backup, ctx)

    monkeypatch.setattr(FilesSource, "drill", buggy)
    rc, out, err = run_cli(capsys, "--config", cfg, "drill", "--json")
    assert rc == 1 and "Traceback" not in err
    reports = {r["job"]: r for r in json.loads(out)}
    assert reports["alpha"]["outcome"] == "failed" and "KeyError" in reports["alpha"]["error"]
    assert "interrupted" not in reports["alpha"]["error"]
    assert reports["beta"]["outcome"] == "ok"
    db = sqlite3.connect(tmp_path / "etc" / "state" / "catalog.sqlite")
    try:
        rows = dict(db.execute("SELECT job, outcome FROM drills").fetchall())
    finally:
        db.close()
    assert rows == {"alpha": "failed", "beta": "ok"}
