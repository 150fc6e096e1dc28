"""Reads a mongodump archive item by item through the checker: the prelude, then raw documents per namespace."""

from __future__ import annotations

from collections.abc import Iterator

from backupd.formats.mongo_archive.checker import _FAILED, _SEGMENT, MongoArchiveChecker
from backupd.formats.mongo_archive.frames import (
    MAX_BSON,
    MIN_BSON,
    TERMINATOR,
    ArchiveError,
    BinaryReader,
    Namespace,
    Prelude,
    _unpack_i32,
)


def _read_exact(stream: BinaryReader, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_item(stream: BinaryReader) -> bytes:
    """One terminator or document (or whatever is left of it at end of stream; b"" at the end)."""
    head = _read_exact(stream, 4)
    if len(head) < 4:
        return head
    size = _unpack_i32(head, 0)[0]
    if not MIN_BSON <= size <= MAX_BSON:
        return head  # a terminator, or a bad length the checker reports
    return head + _read_exact(stream, size - 4)


def open_archive(stream: BinaryReader) -> tuple[Prelude, Iterator[tuple[Namespace, bytes]]]:
    """Read the prelude now and return it with an iterator of (data namespace, raw document).

    Everything read goes through MongoArchiveChecker, so the iterator raises ArchiveError on the same
    problems the checker reports. As in mongorestore, a namespace's CRC is known only at its EOF block,
    after its documents have been yielded: a restore must treat data as final only when the iterator
    has been exhausted without an error.
    """
    checker = MongoArchiveChecker()

    def step(item: bytes) -> None:
        """Feed one item (b"" = end of stream) and raise on the first fatal problem."""
        if item:
            checker.feed(item)
        else:
            checker.finish()
        if checker._state == _FAILED:
            raise ArchiveError(checker._errors[-1])

    step(_read_exact(stream, 4))
    while (prelude := checker.prelude()) is None:
        item = _read_item(stream)
        step(item)
        if not item:
            raise ArchiveError("stream ended inside the archive prelude")
    if checker._errors:  # metadata errors do not stop the checker, but a restore cannot use them
        raise ArchiveError(checker._errors[0])

    def documents() -> Iterator[tuple[Namespace, bytes]]:
        while True:
            item = _read_item(stream)
            in_segment = checker._state == _SEGMENT
            step(item)
            if not item:
                return
            if in_segment and item != TERMINATOR and checker._cur is not None:
                yield checker._cur.data_ns, item

    return prelude, documents()


def iter_archive(stream: BinaryReader) -> Iterator[Prelude | tuple[Namespace, bytes]]:
    """Yield the Prelude first, then (data namespace, raw BSON document) in stream order."""
    prelude, docs = open_archive(stream)
    yield prelude
    yield from docs
