"""Shared fixtures: real scratch servers from backupd.scratch, and the `integration` marker.

Session-scoped servers are shared by every test: do not stop or break them (kill a Redis master, drop
root's grants) -- ask a `*_factory` for instances of your own, which are stopped when the test ends.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backupd.formats.base import CheckResult, FormatChecker
from backupd.lab.s3 import MotoS3
from backupd.lab.sshd import SSHD
from backupd.scratch.base import ScratchServer
from backupd.scratch.mariadb import MariaDB
from backupd.scratch.mongo import MongoServer
from backupd.scratch.redis import Redis

INTEGRATION_DIR = Path(__file__).parent / "integration"

S = TypeVar("S", bound=ScratchServer)
T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


def _factory(cls: type[S]) -> Iterator[Callable[..., S]]:
    """Start instances of `cls` on demand; stop them (newest first: replicas before masters) at the end."""
    started: list[ScratchServer] = []

    def make(**kwargs: Any) -> S:
        server = cls(**kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    with MariaDB() as server:
        yield server


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHD]:
    with SSHD() as server:
        yield server


@pytest.fixture(scope="session")
def redis_master() -> Iterator[Redis]:
    with Redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_replica(redis_master: Redis) -> Iterator[Redis]:
    with Redis(master=redis_master) as server:
        server.wait_replica_linked()
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    """The session's moto server, with its credentials in this test's environment (as boto3 reads them)."""
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    yield moto_s3


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    with MongoServer() as server:
        yield server


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., MariaDB]]:
    yield from _factory(MariaDB)


@pytest.fixture
def sshd_factory() -> Iterator[Callable[..., SSHD]]:
    yield from _factory(SSHD)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., Redis]]:
    """`redis_factory()` for a master, `redis_factory(master=m, password=...)` for a replica."""
    yield from _factory(Redis)


@pytest.fixture
def moto_s3_factory() -> Iterator[Callable[..., MotoS3]]:
    yield from _factory(MotoS3)


@pytest.fixture
def mongo_factory() -> Iterator[Callable[..., MongoServer]]:
    yield from _factory(MongoServer)


Race = Callable[[Callable[[Any], object], Any, int], list[str]]


def _race_worker(fn: Callable[[Any], object], arg: Any, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        fn(arg)
        out.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put(repr(exc))


@pytest.fixture
def race() -> Race:
    """Run `fn(arg)` in `n` forked processes released at the same instant (as the daemon starts several
    runs at once); returns the failures as reprs, so a test asserts they are none."""

    def run(fn: Callable[[Any], object], arg: Any, n: int = 4) -> list[str]:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(n)
        out = ctx.Queue()
        procs = [ctx.Process(target=_race_worker, args=(fn, arg, barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        return [r for r in (out.get(timeout=5) for _ in procs) if r != "ok"]

    return run


def wait_for(pred: Callable[[], T], timeout: float = 60.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll `pred` until it returns something truthy (which is returned); fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`backupd ARGV` in this process: (exit code, stdout, stderr)."""
    from backupd.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def feed_in_chunks(checker: FormatChecker, data: bytes, chunk: int | None = None) -> CheckResult:
    """Feed a format checker `data` whole, or in `chunk`-byte slices (boundaries anywhere), and finish it."""
    step = chunk or max(len(data), 1)
    for i in range(0, max(len(data), 1), step):
        checker.feed(data[i : i + step])
    return checker.finish()


def catalog_backups(tmp_path: Path, job: str = "site") -> dict[str, sqlite3.Row]:
    """The catalog's backups rows of `job` under `tmp_path/etc`, read by a client of the test's own."""
    db = sqlite3.connect(tmp_path / "etc" / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return {r["backup_id"]: r for r in db.execute("SELECT * FROM backups WHERE job=?", (job,))}
    finally:
        db.close()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)
# systemd 252 prints "Next elapse:" then "Iter. #N:", newer versions "Iteration #N:"; with a local zone other
# than UTC each is followed by an "(in UTC):" line. TZ=UTC makes every one of them a UTC time.
_ELAPSE = re.compile(
    r"^\s*(?:Next elapse|Iter(?:\.|ation) #\d+|\(in UTC\)):\s+\w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$"
)


def _calendar_elapses(values: Sequence[str], base: datetime, iterations: int) -> list[list[datetime]]:
    """`systemd-analyze calendar` (one call): each value's first `iterations` elapses after `base`."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", f"--iterations={iterations}", f"--base-time=@{int(base.timestamp())}",
         *values],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"},
    )
    assert result.returncode == 0, (values, result.stderr)
    blocks: list[list[datetime]] = []
    original = False
    for line in result.stdout.splitlines():
        if "Original form:" in line or ("Normalized form:" in line and not original):
            blocks.append([])
        original = "Original form:" in line
        if m := _ELAPSE.match(line):
            elapse = datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC)
            if elapse not in blocks[-1]:  # "(in UTC):" repeats the line above it when TZ is not UTC
                blocks[-1].append(elapse)
    assert len(blocks) == len(values), result.stdout
    return blocks


def systemd_elapses(values: Sequence[str], base: datetime, count: int) -> list[datetime]:
    """The first `count` times after `base` a timer with these OnCalendar= values elapses, per systemd itself.

    A timer elapses at the earliest next elapse of any of its values: merge each value's elapses, deduplicate,
    sort. A value's elapses are known far enough once it has none left or its last known one is past the
    `count`-th of the merge; only values that are not get asked again, for more (a timer can have dozens of
    values, most of which elapse once a year).
    """
    known = dict(enumerate(_calendar_elapses(values, base, min(count, 4))))
    asked = dict.fromkeys(known, min(count, 4))
    while True:
        merged = sorted({t for elapses in known.values() for t in elapses})
        cutoff = merged[count - 1] if len(merged) >= count else None
        short = [i for i, elapses in known.items()
                 if len(elapses) == asked[i] < count and (cutoff is None or elapses[-1] < cutoff)]
        if not short:
            return merged[:count]
        more = min(count, 4 * max(asked[i] for i in short))
        for i, elapses in zip(short, _calendar_elapses([values[i] for i in short], base, more), strict=True):
            known[i], asked[i] = elapses, more
