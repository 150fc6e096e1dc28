"""The catalog opens safely when several processes create it at the same instant (daemon start-up)."""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

from backupd.catalog import Catalog


def _open(state: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    try:
        cat = Catalog(Path(state))
        cat.close()
        out.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put(repr(exc))


def test_concurrent_first_open_never_fails() -> None:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for _ in range(25):
        with tempfile.TemporaryDirectory() as state:
            barrier = ctx.Barrier(4)
            out: multiprocessing.Queue[str] = ctx.Queue()
            procs = [ctx.Process(target=_open, args=(state, barrier, out)) for _ in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(30)
            failures += [r for r in (out.get(timeout=5) for _ in procs) if r != "ok"]
            assert {c.name for c in Path(state).iterdir()} >= {"catalog.sqlite"}
            assert Catalog(Path(state)).db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures == []
