"""The catalog opens safely when several processes create it at the same instant (daemon start-up)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from backupd.store.catalog import Catalog
from tests.conftest import Race


def _open(state: Path) -> None:
    Catalog(state).close()


def test_concurrent_first_open_never_fails(race: Race) -> None:
    failures: list[str] = []
    for _ in range(25):
        with tempfile.TemporaryDirectory() as state:
            failures += race(_open, Path(state), 4)
            assert (Path(state) / "catalog.sqlite").is_file()
            assert Catalog(Path(state)).db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures == []
