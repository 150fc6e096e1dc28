"""One PITR world per session: a MariaDB with `--log-bin --binlog-format=ROW`, a job with two databases, a
workload at a known pace with the test's own snapshots of the tables at known seconds, two base backups
taken during it, and its binlog committed as segments: by the real stream when this tree has it, else from
the server's closed binlog files (tests/pitr/server_segments.py; BACKUPD_TEST_SERVER_SEGMENTS=1 forces that).

The workload is one thread: at each second s it first snapshots the tables (the state "at s"), then at
s + 0.5 commits one transaction (insert, update, delete). A snapshot is kept only when the transaction
before it returned before the second began, so the snapshot at s holds exactly the transactions
committed in seconds before s, which is what `--until s` restores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupd.lab.content import write_config, write_secret
from backupd.scratch.mariadb import MariaDB
from backupd.store.segments import BinlogPos, Segment, SegmentStore
from tests.conftest import wait_for
from tests.pitr.server_segments import commit_closed_binlogs

LOG_BIN = ["--log-bin=mariadb-bin", "--binlog-format=ROW", "--server-id=1"]
JOB = "shop"
Rows = list[tuple[str, ...]]


def rows(server: MariaDB, database: str, table: str = "items") -> Rows:
    return server.execute(f"SELECT * FROM {table} ORDER BY id", database=database)


@dataclass
class World:
    base: Path
    source: MariaDB
    target: MariaDB
    config: Path
    password_file: Path
    snapshots: dict[int, Rows] = field(default_factory=dict)  # epoch second -> shop.items at that second
    bases: list[str] = field(default_factory=list)  # backup ids, oldest first
    base_seconds: list[int] = field(default_factory=list)  # the second after each base finished

    @property
    def store(self) -> Path:
        return self.base / "store"

    def segments(self) -> list[Segment]:
        return SegmentStore(self.store, JOB).segments()

    def clone(self, dest: Path) -> Path:
        """A copy of the whole config and store (to damage without touching the session's)."""
        shutil.copytree(self.base, dest, symlinks=True, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
        text = (dest / "backupd.toml").read_text().replace(str(self.base), str(dest))
        (dest / "backupd.toml").write_text(text)
        return dest / "backupd.toml"

    def between_bases(self) -> list[str]:
        """File names of the segments wholly between the two bases' positions (neither holds one)."""

        def pos(bid: str) -> tuple[str, int, int]:
            arts = json.loads((self.store / JOB / bid / "manifest.json").read_text())["artifacts"]
            return min(BinlogPos(a["binlog_position"]["file"], a["binlog_position"]["pos"]).key for a in arts)

        first, second = pos(self.bases[0]), pos(self.bases[1])
        names = [s.path.name for s in self.segments() if first < s.start.key and s.end.key <= second]
        assert names, "the workload made no segment between the bases"
        return names

    def to(self, database: str) -> str:
        return f"mysql://root@{self.target.host}:{self.target.port}/{database}"


def _wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _workload(world: World, seconds: int, first_id: int) -> int:
    """Run `seconds` seconds of the paced workload; returns the next free id."""
    src = world.source
    nid = first_id
    now = int(time.time()) + 1
    clean = True
    for s in range(now, now + seconds):
        _wait_until(s)
        if clean:
            world.snapshots[s] = rows(src, "shop")
        _wait_until(s + 0.5)
        src.execute(
            "BEGIN;"
            f"INSERT INTO items VALUES ({nid}, 'item {nid}', {nid % 7}, {nid}.25);"
            f"UPDATE items SET qty = qty + 1, name = CONCAT(name, '+') WHERE id = {nid - 3};"
            f"DELETE FROM items WHERE id = {nid - 6} AND id % 2 = 0;"  # the table grows: counts tell bases apart
            "COMMIT;",
            database="shop",
        )
        nid += 1
        clean = time.time() < s + 1
    return nid


class Segments:
    """Where the world's segments come from: the real stream (`backupd stream JOB`, when this tree has it)
    or, before it, the server's closed binlogs cut by tests/pitr/server_segments.py. `commit()` returns
    once every transaction the server has written is in a committed segment."""

    def __init__(self, source: MariaDB, cfg: Path, store: SegmentStore) -> None:
        self.source, self.store = source, store
        self.proc: subprocess.Popen[str] | None = None
        if importlib.util.find_spec("backupd.sources.mysql.stream") is not None and not os.environ.get(
            "BACKUPD_TEST_SERVER_SEGMENTS"
        ):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backupd", "--config", str(cfg), "stream", JOB],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )

    def commit(self) -> None:
        if self.proc is None:
            commit_closed_binlogs(self.source, self.store, JOB, per_segment=3)
            return
        want = int(self.source.execute("SELECT @@gtid_binlog_pos")[0][0].split("-")[-1])

        def done() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "the stream stopped"
            last = self.store.last()
            return last is not None and int(str(last.manifest["gtid_end"]).split("-")[-1]) >= want

        wait_for(done, 60, "the stream to commit the server's last transaction")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.communicate(timeout=60)


@pytest.fixture(scope="session")
def pitr_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from backupd.cli import main

    base = tmp_path_factory.mktemp("pitr")
    with MariaDB(base_dir=base / "srv-src", extra_args=LOG_BIN) as source, MariaDB(base_dir=base / "srv-dst") as target:
        source.execute(
            "CREATE DATABASE shop; CREATE DATABASE blog;"
            "CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, qty INT, price DECIMAL(10,2));"
            "CREATE TABLE blog.posts (id INT PRIMARY KEY, title VARCHAR(64));"
            "INSERT INTO blog.posts VALUES (1, 'hello');"
        )
        source.execute(
            "INSERT INTO items VALUES " + ",".join(f"({i}, 'item {i}', {i % 7}, {i}.25)" for i in range(1, 21)) + ";",
            database="shop",
        )
        pw = write_secret(base / "root.pw", source.root_password)
        job = {
            "type": "mysql", "schedule": "@daily", "host": source.host, "port": source.port, "user": "root",
            "password_file": str(pw), "databases": ["shop", "blog"],
            "pitr": {"enabled": True, "server_id": 4001, "window": "1h", "segment": "1s"},
        }
        world_base = base / "world"
        cfg = write_config(world_base, {JOB: job}, retention={"default": {"keep_last": 5}})
        target_pw = write_secret(base / "target.pw", target.root_password)
        world = World(world_base, source, target, cfg, target_pw)

        def backup() -> None:
            assert main(["--config", str(cfg), "run", JOB]) == 0
            ids = sorted(p.name for p in (world.store / JOB).iterdir() if p.name[0].isdigit())
            world.bases.append(ids[-1])
            world.base_seconds.append(int(time.time()) + 1)

        segments = Segments(source, cfg, SegmentStore(world.store, JOB))
        if segments.proc is not None:
            segments.commit()  # the stream is live before the workload: it cuts segments as it goes
        backup()
        nid = _workload(world, 4, 21)
        segments.commit()
        time.sleep(1.0)  # backup ids are per second
        backup()
        nid = _workload(world, 4, nid)
        # DDL naming its own database (blog only): --rewrite-db cannot rename it
        source.execute("CREATE TABLE blog.extra (id INT PRIMARY KEY); INSERT INTO blog.extra VALUES (1);", "blog")
        _workload(world, 2, nid)
        segments.commit()
        segments.stop()
        yield world


def second(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
