"""Throughput of the RDB verifier against `sha256sum` on the same file.

Usage: python bench/bench_rdb_verify.py [SIZE_MB]   (default 1024)

Writes an RDB-shaped file (real header, random payload, FF, correct CRC-64 trailer) to a temp dir, then
times both readers over it twice and keeps the best run of each. Both read the same file, so both see the
page cache alike; the target is ours >= 0.7x sha256sum's speed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, not installed

from backupd.formats.rdb import CRC64_JONES, RdbChecker

CHUNK = 1 << 20
HEADER = (
    b"REDIS0011"
    + b"\xfa\x09redis-ver\x057.2.4"
    + b"\xfa\x0aredis-bits\xc0\x40"
    + b"\xfe\x00\xfb\x01\x00"  # SELECTDB 0, RESIZEDB 1 key
    + b"\x00\x03big"  # a string key; its value is the random payload below (length not parsed)
)


def write_rdb(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)
    crc = CRC64_JONES.calc(HEADER)
    with path.open("wb") as out:
        out.write(HEADER)
        for _ in range(size // CHUNK):
            out.write(block)
            crc = CRC64_JONES.calc(block, crc)
        crc = CRC64_JONES.calc(b"\xff", crc)
        out.write(b"\xff" + crc.to_bytes(8, "little"))


def time_ours(path: Path) -> float:
    start = time.perf_counter()
    checker = RdbChecker()
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(CHUNK):
            checker.feed(chunk)
    result = checker.finish()
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"checker rejected the generated file: {result.errors}")
    return elapsed


def time_sha256sum(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_hashlib(path: Path) -> float:
    """The sha256 the pipeline itself computes: a second, usually faster, reference."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return time.perf_counter() - start


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    with tempfile.TemporaryDirectory(prefix="bench-rdb-") as tmp:
        path = Path(tmp) / "dump.rdb"
        write_rdb(path, size_mb * CHUNK)
        mb = path.stat().st_size / 1e6
        ours = min(time_ours(path) for _ in range(2))
        sha = min(time_sha256sum(path) for _ in range(2))
        lib = min(time_hashlib(path) for _ in range(2))
    print(f"file: {mb:.0f} MB RDB, read in {CHUNK >> 10} KiB chunks")
    print(f"RdbChecker: {ours:.2f} s  {mb / ours:8.1f} MB/s")
    print(f"sha256sum:  {sha:.2f} s  {mb / sha:8.1f} MB/s")
    print(f"hashlib:    {lib:.2f} s  {mb / lib:8.1f} MB/s  (Python's sha256, for reference)")
    print(f"ratio ours/sha256sum: {sha / ours:.2f}x (target >= 0.7x)")


if __name__ == "__main__":
    main()
