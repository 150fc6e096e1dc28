"""The streaming pipeline: what goes in comes out, hashed, compressed, 0600, with the checker fed."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from backupd.engine.pipeline import ArtifactWriter
from backupd.formats.base import CheckResult, FormatChecker
from backupd.store.backups import Store


class CountingChecker(FormatChecker):
    format = "test"

    def __init__(self) -> None:
        self.n = 0
        self.chunks = 0

    def feed(self, data: bytes) -> None:
        self.n += len(data)
        self.chunks += 1

    def finish(self) -> CheckResult:
        return CheckResult("test", ok=self.n > 0, stats={"bytes": self.n})


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "none"])
def test_roundtrip_hash_and_mode(tmp_path: Path, algorithm: str) -> None:
    payload = os.urandom(3 << 20) + b"tail" * 100_000
    checker = CountingChecker()
    w = ArtifactWriter(tmp_path, "data", "test", ".bin", algorithm=algorithm, level=3, checker=checker)
    for i in range(0, len(payload), 100_000):
        w.write(payload[i : i + 100_000])
    res = w.close()
    stored = (tmp_path / res.file).read_bytes()
    assert res.bytes == len(stored)
    assert res.raw_bytes == len(payload)
    assert res.sha256 == hashlib.sha256(stored).hexdigest()
    assert checker.n == len(payload) and res.check is not None and res.check.ok
    assert stat.S_IMODE((tmp_path / res.file).stat().st_mode) == 0o600
    if algorithm == "zstd":
        assert res.file == "data.bin.zst"
        assert zstandard.ZstdDecompressor().decompress(stored, max_output_size=len(payload)) == payload
    elif algorithm == "gzip":
        assert res.file == "data.bin.gz"
        assert gzip.decompress(stored) == payload
    else:
        assert stored == payload


def test_abort_removes_the_file(tmp_path: Path) -> None:
    w = ArtifactWriter(tmp_path, "data", "test", ".bin")
    w.write(b"x" * 1000)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_write_error_surfaces_to_the_caller(tmp_path: Path) -> None:
    """ENOSPC and friends from the worker thread must reach the run, not vanish in a thread."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("/dev/full is not available on this machine")
    w = ArtifactWriter(tmp_path, "data", "test", ".bin", algorithm="none")
    os.dup2(os.open(full, os.O_WRONLY), w._fh.fileno())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):
            w.write(os.urandom(1 << 20))
        w.close()
    w.abort()


def test_store_commit_is_atomic_and_private(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    store = Store(tmp_path / "store")
    when = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    bid, partial = store.new_partial("job", when)
    assert bid == "20261128T120000Z" and partial.name == ".partial-20261128T120000Z"
    assert store.backups("job") == []  # a partial is never listed
    (partial / "a.bin").write_bytes(b"abc")
    final = store.commit("job", bid, partial, {"job": "job", "verified": True, "artifacts": []})
    assert final.name == bid and not partial.exists()
    assert [b.backup_id for b in store.backups("job")] == [bid]
    assert stat.S_IMODE(final.stat().st_mode) == 0o700
    assert stat.S_IMODE((final / "manifest.json").stat().st_mode) == 0o600
    # the same second again gets the next id instead of clobbering
    bid2, partial2 = store.new_partial("job", when)
    assert bid2 == "20261128T120001Z"
    assert store.sweep_partials("job") == [partial2]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd CLI is not installed")
def test_zstd_worker_output_is_one_checksummed_frame(tmp_path: Path) -> None:
    """zstd compresses in its own worker thread, in jobs (engine/compression.py): the stored file must still
    be one frame with a content checksum that the zstd CLI accepts, and a flipped byte must fail it."""
    payload = b"".join(b"%d\tsome row text %d\n" % (i, i * 7) for i in range(600_000))  # ~14 MB: several jobs
    w = ArtifactWriter(tmp_path, "data", "test", ".bin", algorithm="zstd", level=3)
    for i in range(0, len(payload), 1 << 20):
        w.write(payload[i : i + (1 << 20)])
    res = w.close()
    path = tmp_path / res.file
    stored = path.read_bytes()
    assert zstandard.get_frame_parameters(stored).has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == payload
    assert subprocess.run(["zstd", "-tq", str(path)], capture_output=True).returncode == 0
    bad = tmp_path / "bad.zst"
    bad.write_bytes(stored[: len(stored) // 2] + bytes([stored[len(stored) // 2] ^ 1]) + stored[len(stored) // 2 + 1 :])
    assert subprocess.run(["zstd", "-tq", str(bad)], capture_output=True).returncode != 0


WRITE_FAILS_AT_FLUSH = """
import os, resource, signal, sys
from pathlib import Path
from backupd.engine.pipeline import ArtifactWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
w = ArtifactWriter(Path(sys.argv[1]), "data", "test", ".bin")
w.write(os.urandom(1 << 20))  # zstd's worker keeps most of this until the final flush
try:
    w.close()
except OSError as exc:
    w.abort()
    print("failed:", exc.strerror)
"""


def test_a_write_error_in_the_final_flush_is_raised_not_hung(tmp_path: Path) -> None:
    """The file limit is hit while the last compressed bytes are written (after the stop was queued): close()
    must raise that error, and abort() remove the file, instead of waiting forever for a second stop."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE_FAILS_AT_FLUSH, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "failed: File too large"
    assert list(tmp_path.iterdir()) == []
