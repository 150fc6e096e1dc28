"""`show` and `verify` take ID or JOB/ID; an ID two jobs share is refused rather than resolved to either."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backupd.lab.content import write_config
from tests.conftest import run_cli


def test_shared_backup_id_needs_job_slash_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    jobs = {n: {"type": "files", "source": f"{src}/", "schedule": "@daily"} for n in ("alpha", "beta")}
    cfg = str(write_config(tmp_path / "etc", jobs))
    assert run_cli(capsys, "--config", cfg, "run", "alpha")[0] == 0
    store = tmp_path / "etc" / "store"
    [backup] = [p for p in (store / "alpha").iterdir() if not p.name.startswith(".")]
    manifest = json.loads((backup / "manifest.json").read_text())
    (store / "beta").mkdir(mode=0o700)
    shutil.copytree(backup, store / "beta" / backup.name)
    manifest["job"] = "beta"
    (store / "beta" / backup.name / "manifest.json").write_text(json.dumps(manifest))

    rc, _, err = run_cli(capsys, "--config", cfg, "show", backup.name)
    assert rc == 2 and "alpha, beta" in err and f"JOB/{backup.name}" in err
    rc, _, err = run_cli(capsys, "--config", cfg, "verify", backup.name)
    assert rc == 2 and "alpha, beta" in err
    rc, out, _ = run_cli(capsys, "--config", cfg, "show", f"beta/{backup.name}", "--json")
    assert rc == 0 and json.loads(out)["path"].endswith(f"beta/{backup.name}")
    rc, out, err = run_cli(capsys, "--config", cfg, "verify", f"alpha/{backup.name}")
    assert rc == 0 and f"alpha/{backup.name}: ok" in out and "beta" not in out, err
