"""Restoring an RDB writes it 0600 from its first byte and renames it into place whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zstandard

from backupd.errors import BackupdError
from backupd.sources.redis.load import write_rdb

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "redis-rdb" / "hash-ziplist.rdb"


def test_restored_rdb_is_private_while_it_is_written(tmp_path: Path) -> None:
    stored = tmp_path / "dump.rdb.zst"
    stored.write_bytes(zstandard.ZstdCompressor().compress(FIXTURE.read_bytes()))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / ".dump.rdb.restoring").write_bytes(b"leftover")  # a world-readable leftover must not be reused
    os.chmod(dest / ".dump.rdb.restoring", 0o644)
    modes: list[int] = []

    def progress(n: int) -> None:  # called while the temp file is being written
        modes.append(stat.S_IMODE((dest / ".dump.rdb.restoring").stat().st_mode))

    old = os.umask(0)  # the loosest umask: only the mode we pass protects the file
    try:
        final = write_rdb(stored, dest, yes=False, progress=progress)
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}
    assert final.read_bytes() == FIXTURE.read_bytes()
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert not (dest / ".dump.rdb.restoring").exists()
    with pytest.raises(BackupdError, match="exists; use --yes"):
        write_rdb(stored, dest, yes=False)
