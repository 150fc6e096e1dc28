"""Streaming compress + hash + atomic write, with a format check of the same stream, in one pass.

The caller's thread reads the source and feeds the format checker; a worker thread compresses, hashes and
writes. zstd and hashlib release the GIL, so compression runs on the second core while the checker and
the dump process use the first. A bounded queue keeps memory constant whatever the dump's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from backupd.engine.compression import EXTENSIONS, compressor
from backupd.engine.crypto import AGE_EXT, EncryptStage, fingerprint
from backupd.formats.base import CheckResult, FormatChecker

QUEUE_CHUNKS = 8  # at most ~8 MiB in flight here, plus what zstd's worker holds (a few 2 MiB jobs)
FILE_MODE = 0o600


@dataclass
class ArtifactResult:
    name: str
    file: str
    format: str
    compression: str
    bytes: int
    raw_bytes: int
    sha256: str
    seconds: float
    check: CheckResult | None
    extra: dict[str, Any] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)  # fingerprints, when encrypted

    @property
    def ok(self) -> bool:
        return self.check is None or self.check.ok

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "file": self.file,
            "format": self.format,
            "compression": self.compression,
            "bytes": self.bytes,
            "raw_bytes": self.raw_bytes,
            "sha256": self.sha256,
            "seconds": round(self.seconds, 3),
            "stats": self.check.stats if self.check else {},
            "facts": self.check.facts if self.check else {},
            "verification": {
                "ok": self.ok,
                "errors": self.check.errors if self.check else [],
                "warnings": self.check.warnings if self.check else [],
            },
        }
        if self.recipients:
            out["encrypted"] = True
            out["encryption"] = "age"
            out["recipients"] = list(self.recipients)
        out.update(self.extra)
        return out


_STOP = object()


class ArtifactWriter:
    """Write one artifact: `write()` raw bytes, then `close()` to flush, fsync and get the result.

    With `recipients` (age public keys) the compressed stream is encrypted before it is hashed and written:
    dump -> format check (plaintext) -> zstd -> age -> sha256 -> file, all in the one pass; the file is named
    `{name}{ext}.zst.age` and its sha256 and size are those of the ciphertext, which is what is stored."""

    def __init__(
        self,
        directory: Path,
        name: str,
        fmt: str,
        ext: str,
        algorithm: str = "zstd",
        level: int = 3,
        checker: FormatChecker | None = None,
        on_progress: Callable[[int], None] | None = None,
        recipients: list[str] | None = None,
    ) -> None:
        self.name = name
        self.format = fmt
        self.algorithm = algorithm
        self.recipients = list(recipients or [])
        self.filename = f"{name}{ext}{EXTENSIONS[algorithm]}{AGE_EXT if self.recipients else ''}"
        self.path = directory / self.filename
        self.checker = checker
        self.on_progress = on_progress
        self.raw_bytes = 0
        self._started = time.monotonic()
        self._compressor = compressor(algorithm, level)
        self._sha = hashlib.sha256()
        self._written = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._fh: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self._encrypt: EncryptStage | None = None
        try:
            if self.recipients:
                self._encrypt = EncryptStage(self.recipients, self._store, name)
        except BaseException:
            self._fh.close()
            self.path.unlink(missing_ok=True)
            raise
        self._thread = threading.Thread(target=self._work, name=f"compress-{name}", daemon=True)
        self._thread.start()
        self._closed = False

    def _emit(self, data: bytes) -> None:
        """Compressed bytes: through the encrypting stage if there is one, else straight to the file."""
        if not data:
            return
        if self._encrypt is not None:
            self._encrypt.write(data)
        else:
            self._store(data)

    def _store(self, data: bytes) -> None:
        """Bytes as they are stored: hashed and written."""
        if data:
            self._sha.update(data)
            view = memoryview(data)
            while view:
                n = self._fh.write(view)
                if n is None:  # pragma: no cover - raw files never return None
                    continue
                view = view[n:]
            self._written += len(data)

    def _work(self) -> None:
        stopped = False
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    stopped = True  # zstd's worker may hold most of the output until this flush
                    self._emit(self._compressor.flush())
                    if self._encrypt is not None:
                        self._encrypt.close()
                    return
                assert isinstance(item, bytes)
                self._emit(self._compressor.compress(item))
        except BaseException as exc:  # reported to the writer's caller, never swallowed
            self._error = exc
            if self._encrypt is not None:
                with contextlib.suppress(BaseException):
                    self._encrypt.close()
            # keep draining so the producer never blocks on a full queue (unless the stop was taken already)
            while not stopped and self._queue.get() is not _STOP:
                pass

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            return
        self.raw_bytes += len(data)
        self._queue.put(bytes(data))
        if self.checker is not None:
            self.checker.feed(data)
        if self.on_progress is not None:
            self.on_progress(len(data))

    def close(self) -> ArtifactResult:
        """Flush, fsync and report. Raises the worker's error (e.g. ENOSPC) if writing failed."""
        self._finish_thread()
        if self._error is not None:
            raise self._error
        os.fsync(self._fh.fileno())
        self._fh.close()
        check = self.checker.finish() if self.checker is not None else None
        return ArtifactResult(
            name=self.name,
            file=self.filename,
            format=self.format,
            compression=self.algorithm,
            bytes=self._written,
            raw_bytes=self.raw_bytes,
            sha256=self._sha.hexdigest(),
            seconds=time.monotonic() - self._started,
            check=check,
            recipients=[fingerprint(r) for r in self.recipients],
        )

    def abort(self) -> None:
        """Stop and delete the file; used when the dump failed."""
        self._finish_thread()
        try:
            self._fh.close()
        finally:
            self.path.unlink(missing_ok=True)

    def _finish_thread(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()


def pump(read: Callable[[int], bytes], writer: ArtifactWriter, chunk: int = 1 << 20) -> int:
    """Copy from a read function (os.read on a pipe, a channel's recv...) into the writer until EOF."""
    total = 0
    while True:
        data = read(chunk)
        if not data:
            return total
        writer.write(data)
        total += len(data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(chunk):
            h.update(data)
    return h.hexdigest()
