"""Compression codecs: streaming compressors for the pipeline, and detection + decompression for readers."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import zstandard

from backupd.engine.crypto import AGE_EXT, open_decrypted
from backupd.formats.agehdr import MAGIC as AGE_MAGIC

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}
CHUNK = 1 << 20
# zstd compresses in a worker thread of its own (libzstd's, not Python's), in jobs of this many bytes: the
# GIL is never held while it works, so the format checker's Python on the reading thread cannot stall it
# (one worker: the same CPU as compressing inline, a few MB more memory; docs/performance.md).
ZSTD_WORKERS = 1
ZSTD_JOB = 2 << 20


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
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=ZSTD_WORKERS, job_size=ZSTD_JOB, write_checksum=True
        )
        return zstandard.ZstdCompressor(compression_params=params).compressobj()
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


def open_stored(path: Path) -> BinaryIO:
    """A stored file's compressed bytes: decrypted on the fly (with the keyring's identities) if it is an
    age file, else the file itself. Raises `crypto.DecryptionError` before returning when it cannot."""
    fh = path.open("rb")
    if fh.read(len(AGE_MAGIC)) == AGE_MAGIC:
        fh.close()
        return open_decrypted(path)
    fh.seek(0)
    return fh


def stored_codec(path: Path) -> str:
    """The codec of a stored file's (decrypted) content: an encrypted one's is in its name (.zst.age)."""
    if path.name.endswith(AGE_EXT):
        inner = path.name[: -len(AGE_EXT)]
        return next((a for a, ext in EXTENSIONS.items() if ext and inner.endswith(ext)), "none")
    with path.open("rb") as fh:
        return detect(fh.read(4))


def open_decompressed(path: Path) -> tuple[str, BinaryIO]:
    """Open any stored file for reading its uncompressed bytes, whatever the codec, decrypting if need be."""
    fh = open_stored(path)
    head = cast(io.BufferedReader, fh).peek(4)[:4]  # both kinds of stream are buffered readers
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
