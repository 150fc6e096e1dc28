"""The far side going away mid-run: the SSH session serving the rsync killed, the database killed mid-dump.

Both faults are injected by PID: the sshd child serving the rsync session is found below the test sshd's PID
in /proc; the database is a scratch MariaDB of the test's own, SIGKILLed by its PID and restarted on the
same datadir and port for the next run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backupd.lab.content import DUMP_GRANTS, make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB
from tests.conftest import run_cli
from tests.faults.invariants import (
    Cli,
    Target,
    alive,
    check_invariants,
    children_of,
    counted,
    descendants,
    runs,
    snapshot,
    wait_until,
)


def cli_for(capsys: pytest.CaptureFixture[str]) -> Cli:
    return lambda *argv: run_cli(capsys, *argv)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_ssh_session_dropped_mid_rsync(
    mariadb: MariaDB, sshd_factory: Callable[..., SSHD], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = cli_for(capsys)
    sshd = sshd_factory()
    assert sshd.pid is not None
    database = f"wpd_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    seed_wordpress(mariadb, database, posts=10, user="faultdrop", password=password)
    site = make_site(tmp_path / "www", uploads=2)
    big = site / "wp-content" / "uploads" / "big.bin"
    job = {
        "type": "wordpress",
        "schedule": "@daily",
        "mysql": {"host": mariadb.host, "port": mariadb.port, "user": "faultdrop",
                  "password_file": str(write_secret(tmp_path / "pw", password)), "databases": [database],
                  "via_ssh": True},
        "files": {"source": str(site)},
        "ssh": {**sshd.ssh_config(), "bwlimit": "4000"},  # 4 MB/s: the rsync of 3 MB lasts long enough
    }
    t = Target.at(write_config(tmp_path / "etc", {"wp": job}), "wp")
    rc, _, err = cli("--config", str(t.config), "run", t.job)
    assert rc == 0, err
    big.write_bytes(os.urandom(3 << 20))  # new content: the next rsync has to move it
    before = snapshot(t)
    with counted("SSH session killed mid-rsync"):
        proc = t.popen("run", t.job)

        def rsync_session() -> int | None:
            for child in children_of(sshd.pid or 0):
                if any(b"rsync" in cmdline(p) for p in descendants(child)):
                    return child
            return None

        wait_until(lambda: rsync_session() is not None or proc.poll() is not None, what="the rsync session")
        session = rsync_session()
        assert session is not None, "the run ended before its rsync was seen"
        time.sleep(0.2)
        below = descendants(session)
        os.kill(session, 9)
        for pid, start in below.items():
            if alive(pid, start):
                os.kill(pid, 9)
        out, errtext = proc.communicate(timeout=120)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, errtext)
        one_line(done, "job wp", "rsync")
        assert t.partials() == [] and snapshot(t) == before
        assert runs(t)[-1]["outcome"] == "failed" and runs(t)[-1]["step"] == "rsync", dict(runs(t)[-1])
        # the run's own children (rsync's ssh) notice the dropped session and exit on their own
        wait_until(lambda: not descendants(proc.pid), what="the run's children to exit")
        check_invariants(cli, t, before)


@pytest.fixture
def big_table_db(mariadb_factory: Callable[..., MariaDB], tmp_path: Path) -> tuple[MariaDB, Target]:
    db: MariaDB = mariadb_factory()
    db.execute("CREATE DATABASE big; CREATE TABLE big.b (id int PRIMARY KEY, v blob)")
    db.execute("INSERT INTO b SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_30000", database="big")
    password = secrets.token_hex(10)
    db.create_user("faultkill", password, grants=DUMP_GRANTS)
    job = {"type": "mysql", "schedule": "@daily", "host": db.host, "port": db.port, "user": "faultkill",
           "password_file": str(write_secret(tmp_path / "pw", password)), "databases": ["big"]}
    return db, Target.at(write_config(tmp_path / "etc", {"db": job}), "db")


def test_database_killed_mid_dump(big_table_db: tuple[MariaDB, Target], capsys: pytest.CaptureFixture[str]) -> None:
    cli = cli_for(capsys)
    db, t = big_table_db
    rc, _, err = cli("--config", str(t.config), "run", t.job)
    assert rc == 0, err
    before = snapshot(t)
    with counted("database killed mid-dump (SIGKILL of mariadbd)"):
        proc = t.popen("run", t.job)

        def dumping() -> bool:
            if proc.poll() is not None:
                return True
            return any(f.stat().st_size > (1 << 20) for p in t.partials() for f in (t.job_dir / p).iterdir())

        wait_until(dumping, what="the dump half-way")
        assert proc.poll() is None, "the dump finished before the kill"
        assert any(b"mariadb-dump" in cmdline(p) for p in descendants(proc.pid)), "no dump running"
        db.kill()  # SIGKILL of mariadbd, by the PID we started
        out, errtext = proc.communicate(timeout=120)
        line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, errtext), "job db", "dump")
        assert "Lost connection" in line or "server has gone away" in line or "Can't connect" in line, line
        assert t.partials() == [] and snapshot(t) == before
        assert runs(t)[-1]["outcome"] == "failed"
        db.start()  # the same datadir and port: InnoDB recovers, the job's config is unchanged
        check_invariants(cli, t, before)
