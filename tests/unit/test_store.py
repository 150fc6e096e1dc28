"""Store directories are created safely when several runs start at the same instant."""

from __future__ import annotations

import multiprocessing
import stat
import tempfile
from pathlib import Path

from backupd.store import ensure_private_dir


def _make(path: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    try:
        ensure_private_dir(Path(path))
        out.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put(repr(exc))


def test_concurrent_ensure_private_dir() -> None:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for _ in range(30):
        with tempfile.TemporaryDirectory() as base:
            target = Path(base) / "cfg" / "store" / "job"
            barrier = ctx.Barrier(4)
            out: multiprocessing.Queue[str] = ctx.Queue()
            procs = [ctx.Process(target=_make, args=(str(target), barrier, out)) for _ in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(30)
            failures += [r for r in (out.get(timeout=5) for _ in procs) if r != "ok"]
            for d in (target, target.parent, target.parent.parent):
                assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert failures == []


def test_existing_directory_is_not_loosened_or_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    ensure_private_dir(shared / "store")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "store").stat().st_mode) == 0o700
