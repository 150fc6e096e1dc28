"""Throughput of MongoArchiveChecker against `sha256sum` on the same file.

Usage: python bench/bench_mongo_verify.py [SIZE_MB]   (default 1024; one archive per document size)

For each document size (~1 KiB and ~200 B) it writes an archive of about SIZE_MB with ArchiveWriter
(four interleaved collections plus an empty one) in a temp dir, warms the page cache, then times the
checker reading the file in 1 MiB chunks, `sha256sum` on the file, and hashlib.sha256 for reference.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bson

from backupd.formats.mongo_archive import ArchiveWriter, MongoArchiveChecker

CHUNK = 1 << 20
COLLECTIONS = ("orders", "users", "events", "logs")
SEGMENT_DOCS = 2000  # documents per segment before switching namespace, like a busy multiplexer


def documents(doc_size: int, start: int, count: int) -> Iterator[bytes]:
    """Raw BSON documents of exactly doc_size bytes with distinct _id values, built without encoding."""
    template = bson.encode({"_id": 0, "pad": "x" * 10})
    pad = doc_size - len(template)
    template = bson.encode({"_id": 0, "pad": "x" * (10 + pad)})
    assert len(template) == doc_size
    id_at = template.index(b"\x12_id\x00") + 5 if b"\x12_id\x00" in template else None
    if id_at is None:  # small ints encode as int32
        id_at = template.index(b"\x10_id\x00") + 5
        head, tail, fmt = template[:id_at], template[id_at + 4 :], struct.Struct("<i")
    else:
        head, tail, fmt = template[:id_at], template[id_at + 8 :], struct.Struct("<q")
    pack = fmt.pack
    for i in range(start, start + count):
        yield head + pack(i) + tail


def write_archive(path: Path, size_mb: int, doc_size: int) -> int:
    total_docs = size_mb * (1 << 20) // doc_size
    with path.open("wb", buffering=CHUNK) as out:
        writer = ArchiveWriter(out, "7.0.14", "backupd-bench", concurrent_collections=4)
        for coll in (*COLLECTIONS, "empty"):
            writer.add_namespace("bench", coll, {"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]})
        writer.begin_body()
        written = 0
        turn = 0
        while written < total_docs:
            count = min(SEGMENT_DOCS, total_docs - written)
            coll = COLLECTIONS[turn % len(COLLECTIONS)]
            writer.write_documents("bench", coll, documents(doc_size, written, count))
            written += count
            turn += 1
        for coll in (*COLLECTIONS, "empty"):
            writer.close_namespace("bench", coll)
        writer.close()
    return total_docs


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(CHUNK * 8):
            pass


def time_checker(path: Path) -> tuple[float, int]:
    checker = MongoArchiveChecker()
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            checker.feed(chunk)
    result = checker.finish()
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"checker rejected the bench archive: {result.errors}")
    return elapsed, int(result.stats["documents"])


def time_sha256sum(path: Path) -> float:
    exe = shutil.which("sha256sum")
    if exe is None:
        raise SystemExit("sha256sum not found")
    start = time.perf_counter()
    subprocess.run([exe, str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_hashlib(path: Path) -> float:
    digest = hashlib.sha256()
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return time.perf_counter() - start


def run(size_mb: int, doc_size: int, tmp: Path) -> None:
    path = tmp / f"bench-{doc_size}.archive"
    start = time.perf_counter()
    docs = write_archive(path, size_mb, doc_size)
    gen = time.perf_counter() - start
    mb = path.stat().st_size / 1e6
    warm(path)
    check_s, counted = time_checker(path)
    assert counted == docs, (counted, docs)
    sha_s = min(time_sha256sum(path) for _ in range(2))
    lib_s = time_hashlib(path)
    print(
        f"docs ~{doc_size} B: {mb:.0f} MB, {docs} docs (written in {gen:.1f} s, {mb / gen:.0f} MB/s)\n"
        f"  checker        {check_s:6.2f} s  {mb / check_s:7.0f} MB/s  {docs / check_s / 1e6:5.2f} M docs/s\n"
        f"  sha256sum      {sha_s:6.2f} s  {mb / sha_s:7.0f} MB/s\n"
        f"  hashlib sha256 {lib_s:6.2f} s  {mb / lib_s:7.0f} MB/s\n"
        f"  ratio checker/sha256sum speed: {sha_s / check_s:.2f}x (target >= 0.7x); "
        f"checker/hashlib: {lib_s / check_s:.2f}x"
    )
    path.unlink()


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    with tempfile.TemporaryDirectory(prefix="bench-mongo-") as tmp:
        for doc_size in (1024, 200):
            run(size_mb, doc_size, Path(tmp))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of the large generated objects


if __name__ == "__main__":
    main()
