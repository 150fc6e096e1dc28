"""Retention by window on the real store of a PITR job: the base an instant at the window's edge needs and
every segment from its position on are kept, older segments are pruned (shown by --dry-run first); status
and /metrics show the window."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from backupd.config import load_config
from backupd.daemon.metrics import make_registry
from backupd.logs import EventLog
from backupd.store.prune import prune_jobs
from backupd.store.segments import SegmentStore
from tests.conftest import run_cli
from tests.pitr.conftest import JOB, World, rows, second


def _base_pos(w: World, backup_id: str, store: Path) -> tuple[str, int]:
    man = json.loads((store / JOB / backup_id / "manifest.json").read_text())
    pos = min((a["binlog_position"] for a in man["artifacts"]), key=lambda p: (p["file"], p["pos"]))
    return pos["file"], pos["pos"]


def test_dry_run_shows_the_segments_the_window_no_longer_needs(
    pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    w = pitr_world
    # the run of the second base already pruned (after its commit) what preceded the first base
    first = _base_pos(w, w.bases[0], w.store)
    assert all((s.end.file, s.end.pos) > first for s in w.segments())
    assert (w.segments()[0].start.file, w.segments()[0].start.pos) <= first
    cfg = w.clone(tmp_path / "w")
    store = tmp_path / "w" / "store"
    for bid in w.bases:  # both bases two hours older: the 1 h window's edge now needs only the second
        path = store / JOB / bid / "manifest.json"
        man = json.loads(path.read_text())
        when = datetime.fromisoformat(man["finished_at"].replace("Z", "+00:00")) - timedelta(hours=2)
        man["finished_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        path.write_text(json.dumps(man))
    rc, out, err = run_cli(capsys, "--config", str(cfg), "prune", "--dry-run")
    assert rc == 0, err
    second_pos = _base_pos(w, w.bases[1], store)
    expect = [s.seq for s in w.segments() if (s.end.file, s.end.pos) <= second_pos]
    assert expect
    lines = [line for line in out.splitlines() if " binlog " in line]
    assert [int(line.split()[2]) for line in lines] == expect and all(" delete " in x for x in lines)
    assert f"before {second_pos[0]}:{second_pos[1]} where base {w.bases[1]} starts the window" in lines[0]
    assert "dry run: nothing was deleted" in out
    assert len(SegmentStore(store, JOB).segments()) == len(w.segments())


def test_window_keeps_what_the_edge_needs_and_prunes_the_rest(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:  # fmt: skip
    w = pitr_world
    cfg_path = w.clone(tmp_path / "w")
    store = tmp_path / "w" / "store"
    (tmp_path / "w" / "retention.toml").write_text('[default]\nkeep_last = 1\n')
    config = load_config(cfg_path)
    # an hour after the second base: the window's edge needs the second base, not the first
    now = datetime.fromtimestamp(w.base_seconds[1], UTC) + timedelta(hours=1, seconds=1)
    rows_, errors = prune_jobs(config, [JOB], EventLog("json", quiet=True), now=now)
    assert not errors
    by = {(r.where, r.backup_id): r for r in rows_}
    assert by[("local", w.bases[0])].action == "deleted"
    assert by[("local", w.bases[1])].keep and any("pitr window" in x for x in by[("local", w.bases[1])].reasons)
    second_pos = _base_pos(w, w.bases[1], store)
    left = SegmentStore(store, JOB).segments()
    assert left and all((s.end.file, s.end.pos) > second_pos for s in left), "a segment the base needs is kept"
    assert left[0].start <= left[0].end and (left[0].start.file, left[0].start.pos) <= second_pos
    pruned = [r for r in rows_ if r.where == "binlog"]
    assert pruned and all(r.done for r in pruned)
    # what is left still restores to the last snapshot, and to before the second base it cannot
    s = sorted(w.snapshots)[-1]
    w.target.execute("DROP DATABASE IF EXISTS shop;")
    rc, _, err = run_cli(capsys, "--config", str(cfg_path), "restore", JOB, "--until", second(s), "--to",
                         w.to("shop"), "--password-file", str(w.password_file), "--database", "shop")
    assert rc == 0, err
    assert rows(w.target, "shop") == w.snapshots[s]
    rc, _, err = run_cli(capsys, "--config", str(cfg_path), "restore", JOB, "--until", second(w.base_seconds[0]),
                         "--to", w.to("shop"), "--password-file", str(w.password_file), "--database", "shop",
                         "--yes")
    assert rc != 0 and "before the restorable window" in err


def test_status_and_metrics_show_the_window(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:  # fmt: skip
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--json")
    (st,) = json.loads(out)
    finished = json.loads((tmp_path / "w" / "store" / JOB / w.bases[0] / "manifest.json").read_text())["finished_at"]
    start_at = datetime.fromisoformat(finished.replace("Z", "+00:00")) + timedelta(seconds=1)
    first = start_at.strftime("%Y-%m-%dT%H:%M:%SZ")  # the second after the base finished
    assert st["pitr_window_start"] == first and st["pitr_window_seconds"] == 3600
    assert st["pitr_window_end"] == w.segments()[-1].manifest["last_event_time"]
    _, text_out, _ = run_cli(capsys, "--config", str(cfg), "status")
    assert f"{JOB}: pitr window {first.replace('T', ' ').replace('Z', ' UTC')} .. " in text_out
    text = generate_latest(make_registry(lambda: load_config(cfg))).decode()
    start = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
    name = f'backupd_pitr_window_start_timestamp_seconds{{backup_job="{JOB}"}}'
    line = next(x for x in text.splitlines() if x.startswith(name))
    assert float(line.split()[-1]) == start
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
