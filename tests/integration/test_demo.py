"""`backupd demo`, the README's first command, end to end: every stage (WordPress, MongoDB, Redis, PostgreSQL,
S3), and a machine without the optional
demo packages (a plain `pip install backupd`), where the demo says what it skips and still succeeds."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

BLOCK = "import sys; sys.modules['nx_27017'] = None; sys.modules['moto'] = None; "


def demo(tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = prelude + "from backupd.cli import main; sys.exit(main(['demo', '--dir', sys.argv[1]]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-c", "import sys; " + code, str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )


def test_demo_runs_every_stage(tmp_path: Path) -> None:
    out = demo(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "demo succeeded" in out.stdout and "skipped" not in out.stdout
    for job in ("wordpress", "mongo", "redis", "postgres"):
        assert f"{job}/" in out.stdout and "drill ok" in out.stdout
    assert "backupd verify --s3" in out.stdout
    assert out.stdout.count("drill ok") == 4
    assert "Traceback" not in out.stderr
    if shutil.which("mongod") is None:  # the drill says it used the stand-in, in its report and the catalog
        assert "note: restored into the nx-27017 stand-in (no mongod on this machine)" in out.stdout
        db = sqlite3.connect(tmp_path / "demo" / "state" / "catalog.sqlite")
        try:
            notes = dict(db.execute("SELECT job, notes FROM drills").fetchall())
        finally:
            db.close()
        assert "nx-27017 stand-in" in json.loads(notes["mongo"])[0] and json.loads(notes["redis"]) == []


def test_demo_without_the_demo_extra_says_what_it_skips(tmp_path: Path) -> None:
    out = demo(tmp_path, BLOCK)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "skipping MongoDB: no mongod on PATH and no nx-27017 stand-in" in out.stdout
    assert "skipping S3: moto's S3 server is not installed" in out.stdout
    assert "skipped (not installed here): MongoDB, S3" in out.stdout
    assert out.stdout.count("drill ok") == 3 and "demo succeeded" in out.stdout
