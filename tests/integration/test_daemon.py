"""The scheduler daemon as a real subprocess against real `files` jobs.

Slow runs come from a real source that hangs: an SSH host that accepts the TCP connection and never
says a word (a listening socket nobody serves), so rsync's ssh waits in the banner exchange -- what a
wedged backup host looks like.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.lab.sshd import SSHD
from tests.conftest import wait_for


class DaemonProc:
    """`backupd daemon` with its JSON event log in a file we can search."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.parent / "daemon.log"
        self.err = config.parent / "daemon.err"
        full_env = {**os.environ, **(env or {})}
        with self.log.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backupd", "--config", str(config), "daemon"],
                stdout=out, stderr=err, env=full_env,
            )
        self.port = int(self.wait_event("http_listening")["address"].rsplit(":", 1)[1])

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            for e in self.events():
                if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        found: dict[str, Any] = wait_for(find, timeout, f"event {name} {match}")
        return found

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc]]:
    started: list[DaemonProc] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def silent_host() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


# Yearly by default: a job that never ran is caught up once at start, and no new fire time can fall inside
# a test (an every-minute schedule made a test flaky whenever it crossed a minute boundary).
YEARLY = "0 0 1 1 *"


def hanging_job(sshd: SSHD, port: int, timeout: int, schedule: str = YEARLY) -> dict[str, Any]:
    return {
        "type": "files", "source": "/srv/site", "schedule": schedule, "timeout": timeout,
        "ssh": {**sshd.ssh_config(), "port": port},
    }


def local_job(src: Path, schedule: str = YEARLY) -> dict[str, Any]:
    return {"type": "files", "source": str(src), "schedule": schedule, "timeout": 120}


def make_src(base: Path) -> Path:
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    return src


def runs(config: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(config.parent / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        db.close()


def settings(**scheduler: Any) -> dict[str, Any]:
    return {"http": {"listen": "127.0.0.1:0"}, "scheduler": scheduler}


def backupd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_catchup_on_start_health_metrics_and_watchdog(
    tmp_path: Path, daemons: list[DaemonProc], sshd: SSHD
) -> None:
    src = make_src(tmp_path)
    over_ssh = {**local_job(src), "ssh": sshd.ssh_config()}  # the caught-up run pulls over the test sshd
    config = write_config(
        tmp_path / "cfg",
        {"fresh": over_ssh, "yearly": local_job(src, "0 0 1 1 *")},
        settings=settings(catchup="once"),
    )
    # `yearly` already has a good backup after its latest fire time: no catch-up for it
    manual = backupd(config, "run", "yearly")
    assert manual.returncode == 0, manual.stderr

    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(10)
    d = DaemonProc(config, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    daemons.append(d)

    messages: list[str] = []
    t0 = time.monotonic()
    while sum(m == "WATCHDOG=1" for m in messages) < 3:
        messages.extend(notify.recv(4096).decode().split("\n"))
    pings_took = time.monotonic() - t0
    notify.close()
    assert "READY=1" in messages
    assert any(m.startswith("STATUS=") for m in messages)
    assert pings_took < 3, f"3 watchdog pings at a 0.2 s interval took {pings_took:.1f}s"

    exited = d.wait_event("exited", job="fresh", timeout=30)
    assert exited["rc"] == 0 and exited["trigger"] == "catchup"
    fresh = [r for r in runs(config) if r["job"] == "fresh"]
    assert [(r["trigger"], r["outcome"]) for r in fresh] == [("catchup", "ok")]
    assert [r["trigger"] for r in runs(config) if r["job"] == "yearly"] == ["manual"]
    assert len([p for p in (tmp_path / "cfg" / "store" / "fresh").iterdir() if not p.name.startswith(".")]) == 1

    code, body = d.get("/health")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = d.get("/health/jobs")
    jobs = {j["job"]: j for j in json.loads(body)}
    assert code == 200 and set(jobs) == {"fresh", "yearly"}
    assert jobs["fresh"]["overdue"] is False and jobs["fresh"]["last_run_outcome"] == "ok"
    assert jobs["fresh"]["next_run"] and jobs["fresh"]["last_success_at"]
    code, body = d.get("/metrics")
    text = body.decode()
    assert code == 200
    assert 'backupd_runs_total{backup_job="fresh",outcome="ok"} 1.0' in text
    assert 'backupd_job_overdue{backup_job="fresh"} 0.0' in text
    assert 'backupd_last_success_timestamp_seconds{backup_job="yearly"}' in text
    assert 'backupd_next_run_timestamp_seconds{backup_job="fresh"}' in text
    size = [ln for ln in text.splitlines() if ln.startswith('backupd_last_backup_size_bytes{backup_job="fresh"}')]
    assert size and float(size[0].split()[-1]) > 0
    assert d.get("/nope")[0] == 404

    assert d.stop() == 0


def test_concurrency_limit_and_timeout_kill(
    tmp_path: Path, daemons: list[DaemonProc], sshd: SSHD, silent_host: int
) -> None:
    jobs = {f"hang{i}": hanging_job(sshd, silent_host, timeout=2) for i in range(3)}
    config = write_config(tmp_path / "cfg", jobs, settings=settings(max_concurrent_jobs=2))
    d = DaemonProc(config)
    daemons.append(d)
    for i in range(3):
        e = d.wait_event("exited", job=f"hang{i}", timeout=30)
        assert e.get("reason") == "timeout" and e["rc"] != 0, (e, d.err.read_text()[-2000:])
    assert d.stop() == 0

    rows = runs(config)
    assert sorted(r["job"] for r in rows) == ["hang0", "hang1", "hang2"]
    for r in rows:
        assert r["outcome"] == "failed"
        assert "timed out after 2s" in r["error"], r["error"]
    # never more than two at once: the third started only after one of the first two finished
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    spawned = [e for e in d.events() if e["event"] == "spawned"]
    exited = [e for e in d.events() if e["event"] == "exited"]
    assert spawned[2]["ts"] >= exited[0]["ts"]
    for name in jobs:  # nothing partial left behind
        store = tmp_path / "cfg" / "store" / name
        assert not store.exists() or not any(store.iterdir())


def test_manual_run_during_scheduled_run_then_sigterm(
    tmp_path: Path, daemons: list[DaemonProc], sshd: SSHD, silent_host: int
) -> None:
    config = write_config(tmp_path / "cfg", {"site": hanging_job(sshd, silent_host, timeout=120)}, settings=settings())
    d = DaemonProc(config)
    daemons.append(d)
    spawned = d.wait_event("spawned", job="site")
    wait_for(lambda: any(r["outcome"] == "running" for r in runs(config)), 20, "the run to start")
    partials = list((tmp_path / "cfg" / "store" / "site").glob(".partial-*"))
    assert partials, "a running backup has its .partial directory"

    manual = backupd(config, "run", "site")
    assert manual.returncode == 75, manual.stderr
    assert "already running" in manual.stderr and len(manual.stderr.strip().splitlines()) == 1

    assert d.stop() == 0
    rows = runs(config)
    assert len(rows) == 1 and rows[0]["outcome"] == "failed" and rows[0]["pid"] == spawned["pid"]
    assert "SIGTERM" in rows[0]["error"]
    assert not list((tmp_path / "cfg" / "store" / "site").iterdir()), "no partial and no committed backup"
    with pytest.raises(ProcessLookupError):
        os.kill(spawned["pid"], 0)
    assert [e["reason"] for e in d.events() if e["event"] == "exited"] == ["stop"]


def test_sighup_with_broken_config_keeps_old_one(tmp_path: Path, daemons: list[DaemonProc]) -> None:
    src = make_src(tmp_path)
    config = write_config(tmp_path / "cfg", {"a": local_job(src, "0 0 1 1 *")}, settings=settings(catchup="none"))
    d = DaemonProc(config)
    daemons.append(d)
    missed = d.wait_event("missed", job="a")
    assert missed["catchup"] == "none"

    jobs_dir = tmp_path / "cfg" / "jobs"
    (jobs_dir / "b.toml").write_text('type = "files"\nsource = "/x"\nschedule = "0 0 1 1 *"\nshedule_typo = 1\n')
    d.proc.send_signal(signal.SIGHUP)
    failed = d.wait_event("reload_failed")
    assert "b.toml" in failed["error"] and "shedule_typo" in failed["error"]
    assert d.get("/health")[0] == 200
    assert [j["job"] for j in json.loads(d.get("/health/jobs")[1])] == ["a"]

    (jobs_dir / "b.toml").write_text('type = "files"\nsource = "/x"\nschedule = "0 0 1 1 *"\n')
    d.proc.send_signal(signal.SIGHUP)
    d.wait_event("reloaded")
    assert [j["job"] for j in json.loads(d.get("/health/jobs")[1])] == ["a", "b"]
    assert d.stop() == 0
    assert runs(config) == [], "catchup = none: nothing ran"


def test_daemon_refuses_bad_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", {}, settings={"scheduler": {"max_concurrent_jobs": 0}})
    result = backupd(config, "daemon")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "max_concurrent_jobs" in result.stderr
