"""Compression codecs: streaming compressors for the pipeline, and detection + decompression for readers."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}
CHUNK = 1 << 20


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(algorithm: str, level: int) -> Compressor:
    """A streaming compressor; zstd frames carry a content checksum so decompression also proves content."""
    if algorithm == "zstd":
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return cctx.compressobj()
    if algorithm == "gzip":
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    if algorithm == "none":
        return _Identity()
    raise ValueError(f"unknown compression {algorithm!r}")


def detect(head: bytes) -> str:
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "none"


def open_decompressed(path: Path) -> tuple[str, BinaryIO]:
    """Open any stored file for reading its uncompressed bytes, whatever the codec."""
    fh = path.open("rb")
    head = fh.read(4)
    fh.seek(0)
    algo = detect(head)
    if algo == "zstd":
        return algo, zstandard.ZstdDecompressor().stream_reader(fh, read_size=CHUNK, closefd=True)
    if algo == "gzip":
        return algo, gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return algo, fh


def iter_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        data = stream.read(size)
        if not data:
            return
        yield data
