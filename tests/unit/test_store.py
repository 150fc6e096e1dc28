"""Store directories are created safely when several runs start at the same instant."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from backupd.fsutil import ensure_private_dir
from tests.conftest import Race


def test_concurrent_ensure_private_dir(race: Race) -> None:
    failures: list[str] = []
    for _ in range(30):
        with tempfile.TemporaryDirectory() as base:
            target = Path(base) / "cfg" / "store" / "job"
            failures += race(ensure_private_dir, target, 4)
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
