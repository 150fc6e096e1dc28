"""Idle cost of `backupd daemon` with 50 jobs, and how late a due run starts.

Phase 1: 50 daily jobs, catchup = "none" (nothing runs); the daemon's own CPU (utime + stime from
/proc, children excluded) over --seconds, extrapolated to an hour; RSS at the end; /metrics once.
Phase 2: SIGHUP to a config adding a `* * * * *` job (a real local `files` job); wait for the next
minute boundary and report the spawn lag (daemon event) and the run's start in the catalog (includes
the child's Python start-up). Targets: < 1 CPU s/h, < 60 MB RSS, < 1 s start latency.

    python bench/bench_daemon_idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from backupd.lab.content import write_config

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def wait_event(log: Path, name: str, timeout: float, **match: object) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(log):
            if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
                return e
        time.sleep(0.05)
    raise SystemExit(f"no {name} event within {timeout}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=50)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    src = base / "src"
    src.mkdir()
    (src / "f.txt").write_text("x" * 10_000)
    jobs = {
        f"job{i:02d}": {"type": "files", "source": str(src), "schedule": f"{i % 60} {i % 24} * * *"}
        for i in range(args.jobs)
    }
    settings = {"http": {"listen": "127.0.0.1:0"}, "scheduler": {"catchup": "none"}}
    config = write_config(base / "cfg", jobs, settings=settings)
    log = base / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(config), "daemon"], stdout=out)
    try:
        port = str(wait_event(log, "http_listening", 30)["address"]).rsplit(":", 1)[1]
        wait_event(log, "daemon_start", 30)
        time.sleep(2)  # let start-up settle
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        per_hour = (c1 - c0) / (t1 - t0) * 3600
        print(f"jobs: {args.jobs}, measured {t1 - t0:.1f} s idle")
        print(f"idle CPU: {c1 - c0:.3f} s over {t1 - t0:.0f} s = {per_hour:.2f} CPU s/hour (target < 1; "
              f"resolution {1 / TICKS:.2f} s = {3600 / TICKS / (t1 - t0):.2f} s/hour)")
        print(f"RSS before first scrape: {rss_mb(proc.pid):.1f} MB (target < 60)")
        t = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            body = resp.read()
        print(f"/metrics scrape: {(time.perf_counter() - t) * 1000:.0f} ms, {len(body)} bytes")
        print(f"RSS after a scrape: {rss_mb(proc.pid):.1f} MB")

        (base / "cfg" / "jobs" / "tick.toml").write_text(
            f'type = "files"\nsource = "{src}"\nschedule = "* * * * *"\n'
        )
        proc.send_signal(signal.SIGHUP)
        wait_event(log, "reloaded", 30)
        print(f"waiting up to 60 s for the next minute boundary ({datetime.now():%H:%M:%S} now)")
        spawned = wait_event(log, "spawned", 75, job="tick")
        exited = wait_event(log, "exited", 60, job="tick")
        db = sqlite3.connect(base / "cfg" / "state" / "catalog.sqlite")
        row = db.execute("SELECT started_at, outcome FROM runs WHERE job='tick' ORDER BY id LIMIT 1").fetchone()
        db.close()
        fire = datetime.fromisoformat(str(spawned["fire"]))
        started = datetime.fromisoformat(row[0])
        print(f"start latency: spawn {float(str(spawned['lag'])) * 1000:.0f} ms after the fire time; "
              f"run recorded as started {(started - fire).total_seconds() * 1000:.0f} ms after it "
              f"(includes the child's Python start-up); outcome {row[1]}, rc {exited['rc']} (target < 1 s)")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        print(f"daemon stopped with exit {rc}")


if __name__ == "__main__":
    main()
