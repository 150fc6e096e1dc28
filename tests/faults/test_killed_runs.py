"""`kill -9` and SIGTERM of a real `backupd run` at random instants, for three job types:

- WordPress: the database dumped through a real sshd from a real MariaDB, the site rsynced over SSH;
- Redis: a replica's RDB, BGSAVE over the protocol, the file rsynced over SSH;
- MongoDB: the native engine against the stand-in wire-protocol server.

The instants are drawn uniformly over a measured normal run (spawn to exit) with a seeded generator
(`BACKUPD_FAULT_SEED`, printed). The run is killed by its PID; the children it left (rsync, ssh) are found
below it in /proc and killed by PID too. After each kill the shared invariants are asserted (see
invariants.py), the next run included.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from backupd.lab.content import make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB
from backupd.scratch.mongo import MongoServer
from backupd.scratch.redis import Redis
from tests.conftest import run_cli
from tests.faults.invariants import (
    Cli,
    Outcomes,
    Target,
    check_invariants,
    counted,
    kill_tree,
    rng_for,
    runs,
    snapshot,
    timed_run,
    wait_until,
)

KILLS = {"wordpress": 10, "redis": 10, "mongo": 10}
TERMS = {"wordpress": 3, "redis": 3, "mongo": 3}


@pytest.fixture(scope="module")
def wordpress(mariadb: MariaDB, sshd: SSHD, tmp_path_factory: pytest.TempPathFactory) -> Target:
    base = tmp_path_factory.mktemp("kill-wp")
    database = f"wpk_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    seed_wordpress(mariadb, database, posts=20, user="faultbk", password=password)
    job = {
        "type": "wordpress",
        "schedule": "@daily",
        "mysql": {"host": mariadb.host, "port": mariadb.port, "user": "faultbk",
                  "password_file": str(write_secret(base / "db.password", password)),
                  "databases": [database], "via_ssh": True},
        "files": {"source": str(make_site(base / "www", uploads=3)), "exclude": ["wp-content/cache/"]},
        "ssh": sshd.ssh_config(),
    }
    return Target.at(write_config(base / "etc", {"wp": job}), "wp")


@pytest.fixture(scope="module")
def redis(sshd: SSHD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("kill-redis")
    with Redis(base) as master, Redis(base, master=master) as replica:
        with master.client() as c:
            for i in range(200):
                c.set(f"k:{i}", "v" * (i % 40))
                c.hset(f"h:{i}", mapping={"a": i})
        replica.wait_replica_linked()
        job = {"type": "redis", "schedule": "@daily", "host": replica.host, "port": replica.port,
               "ssh": sshd.ssh_config()}
        yield Target.at(write_config(base / "etc", {"r": job}), "r")


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("kill-mongo")
    with MongoServer(base) as server:
        with server.client() as c:
            c.app.users.insert_many([{"n": i, "name": f"user {i}", "pad": "x" * (i % 50)} for i in range(300)])
            c.app.orders.insert_many([{"_id": i, "total": i * 1.5} for i in range(200)])
        job = {"type": "mongodb", "schedule": "@daily", "uri": server.uri, "engine": "native"}
        yield Target.at(write_config(base / "etc", {"m": job}), "m")


TARGETS = ["wordpress", "redis", "mongo"]


def _cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return lambda *argv: run_cli(capsys, *argv)


@pytest.mark.parametrize("kind", TARGETS)
def test_kill_9_at_random_instants(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    t: Target = request.getfixturevalue(kind)
    cli = _cli(capsys)
    rng = rng_for(seed, f"kill9-{kind}")
    duration = timed_run(t)
    outcomes = Outcomes()
    for i in range(KILLS[kind]):
        before = snapshot(t)
        at = rng.uniform(0, duration)
        with counted(f"kill -9 of backupd run ({kind})"):
            proc = t.popen("run", t.job)
            time.sleep(at)
            if proc.poll() is None:
                phase = "mid-run" if t.partials() else "before the partial / after commit"
                left = kill_tree(proc)
                outcomes.add(f"killed {phase}" + (f" (+{len(left)} children)" if left else ""))
            else:
                proc.communicate()
                assert proc.returncode == 0
                outcomes.add("finished before the instant")
            check_invariants(cli, t, before)
            assert not [r for r in runs(t)[:-1] if r["outcome"] == "running"], "a killed run stayed 'running'"
        print(f"kill -9 {kind} #{i}: at {at:.3f}s of {duration:.2f}s")
    print(f"kill -9 {kind}: {outcomes}")


def _started(t: Target, proc: subprocess.Popen[str]) -> Callable[[], bool]:
    return lambda: bool(t.partials()) or proc.poll() is not None


@pytest.mark.parametrize("kind", TARGETS)
def test_sigterm_at_random_instants(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    """SIGTERM once the run is under way (its partial directory exists): it exits 143, removes the partial
    and records the failure -- or, if it was already past its commit, exits 0 with the backup committed."""
    t: Target = request.getfixturevalue(kind)
    cli = _cli(capsys)
    rng = rng_for(seed, f"sigterm-{kind}")
    duration = timed_run(t)
    outcomes = Outcomes()
    for _ in range(TERMS[kind]):
        before = snapshot(t)
        with counted(f"SIGTERM of backupd run ({kind})"):
            proc = t.popen("run", t.job)
            t0 = time.monotonic()
            started = _started(t, proc)
            wait_until(started, what="the run's partial directory")
            time.sleep(rng.uniform(0, max(duration - (time.monotonic() - t0), 0.05)))
            if proc.poll() is None:
                kill_tree(proc, signal.SIGTERM)
            else:
                proc.communicate()
            assert t.partials() == [], "SIGTERM left the partial directory"
            last = runs(t)[-1]
            if proc.returncode == 0:
                assert last["outcome"] == "ok"
                outcomes.add("committed before the signal")
                before = snapshot(t)
            elif proc.returncode == -signal.SIGTERM:
                # past the run (its handlers restored, the lock released): the default action, nothing lost
                assert last["outcome"] == "ok" and last["backup_id"] in t.committed(), dict(last)
                outcomes.add("signal after the run had finished")
                before = snapshot(t)
            else:
                assert proc.returncode == 128 + signal.SIGTERM, proc.returncode
                assert last["outcome"] == "failed" and "SIGTERM" in last["error"], dict(last)
                outcomes.add("interrupted, recorded")
            check_invariants(cli, t, before)
    print(f"SIGTERM {kind}: {outcomes}")
