"""The data area of a custom-format archive: every block the TOC announces, in order, to the end.

A block is a type byte and a dumpId Int, then chunks (a length Int and that many bytes) up to an Int 0;
a large-objects block holds, per object, an OID Int and its chunks. Without compression pg_dump writes
one chunk per COPY row, so the chunk walk is the hot path of the whole checker (see `_chunk_run`). COPY
text escapes newlines inside values, so rows are counted as newlines; zlib blocks (and each large object)
are one zlib stream each and are inflated to count; lz4/zstd blocks are only walked.
"""

from __future__ import annotations

import struct
import zlib
from enum import Enum, auto
from typing import Any

from .toc import DataEntry, TocReader

BLK_DATA, BLK_BLOBS = 1, 3
INFLATE_STEP = 1 << 20  # most bytes one zlib call may produce: a zlib bomb costs time, not memory
COPY_END = b"\n\\.\n\n\n"  # the terminator line and the two blank lines pg_dump writes after it

_CHUNK_HEAD = struct.Struct("<BI")  # an Int when intSize is 4 (every platform PostgreSQL runs on)
# Chunk headers sit between the COPY text. A run of chunks is counted whole, so what the headers add
# to the counts is taken off again: a chunk length below 64 KiB is `00 lo hi 00 00`, that is four NUL
# bytes (three if hi and lo are both non-zero) and a newline for each of lo, hi that is 0x0A. Per
# length: newlines + 4 * (one NUL fewer); 0 for most lengths, so the loop only tests it.
_HEADER_FIX = bytes(((i & 0xFF) == 10) + ((i >> 8) == 10) + 4 * (i > 0xFF and (i & 0xFF) != 0) for i in range(1 << 16))


class _State(Enum):
    """Where the walker is: each state but BODY reads one fixed-size element next."""

    BLOCK = auto()  # a block header (type byte, dumpId) or the end of the archive
    LEN = auto()  # a chunk length; 0 ends the block (or the large object)
    OID = auto()  # a large object's OID; 0 ends the BLOBS block
    BODY = auto()  # inside a chunk's payload


class BlockWalker:
    """Walks the blocks after the TOC that `toc` read; `error` is the first problem found.

    Memory: one block's zlib state and a fixed-size element split between feeds; nothing grows with
    the data. Findings: `tables` (rows per table), `uncounted`, `large_objects`, `blocks`, `warnings`.
    """

    def __init__(self, toc: TocReader) -> None:
        self.error: str | None = None
        self.warnings: list[str] = []
        self.tables: dict[str, int] = {}
        self.uncounted: list[str] = []
        self.large_objects = 0
        self.blocks = 0
        self._entries = toc.entries
        self._ids = toc.ids
        self._blob_entries = toc.blob_entries
        self._compression = toc.compression
        self._int_len = toc.int_len
        self._base = 0  # stream offset of the current feed's first byte
        self._state = _State.BLOCK
        self._pending = bytearray()  # a fixed-size element split between feeds
        self._pending_at = 0
        self._next = 0  # index in _entries of the block expected next
        self._entry: DataEntry | None = None
        self._block_at = 0
        self._left = 0  # payload bytes of the current chunk still to come
        self._fast = False  # uncompressed COPY data: whole runs of chunks at C speed
        self._counting = False
        self._in_blobs = False
        self._inflate: Any = None  # zlib decompressobj of the current block or large object
        self._newlines = 0
        self._tail = b"\n"  # the last 6 payload bytes, after a virtual newline before the first

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def check_end(self, total: int) -> None:
        """The stream ended at offset `total`: inside a block, or before a block the TOC announced?"""
        if self._state is _State.BLOCK and self._pending:
            self._fail(
                f"truncated: the stream ends at offset {total}, inside the block header at offset {self._pending_at}"
            )
        elif self._state is not _State.BLOCK:
            entry = self._entry
            assert entry is not None
            self._fail(
                f"truncated: the stream ends at offset {total}, inside the data block of {entry.desc} "
                f"{entry.name} (dumpId {entry.dump_id}) that starts at offset {self._block_at}"
            )
        elif self._next < len(self._entries):
            missing = self._entries[self._next]
            self._fail(
                f"truncated at a block boundary (offset {total}): {len(self._entries) - self._next} of "
                f"{len(self._entries)} data blocks missing, from {missing.desc} {missing.name} "
                f"(dumpId {missing.dump_id})"
            )
        elif self._blob_entries and self.large_objects not in (0, self._blob_entries):
            self.warnings.append(
                f"the TOC lists {self._blob_entries} large objects, the data blocks hold {self.large_objects}"
            )

    def feed(self, data: bytes, pos: int, base: int) -> None:
        """Walk data[pos:]; `base` is the stream offset of data[0]."""
        self._base = base
        end = len(data)
        while pos < end and self.error is None:
            if self._state is _State.BODY:
                take = min(self._left, end - pos)
                self._payload(data, pos, pos + take)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _State.LEN
                continue
            size = self._int_len + (self._state is _State.BLOCK)
            if self._pending:
                take = min(size - len(self._pending), end - pos)
                self._pending += data[pos : pos + take]
                pos += take
                if len(self._pending) < size:
                    return
                element = bytes(self._pending)
                self._pending.clear()
                self._element(element, 0, self._pending_at)
                continue
            if self._fast and self._state is _State.LEN:
                pos = self._chunk_run(data, pos, end)
                if pos >= end:
                    return
            if end - pos < size:
                self._pending_at = self._base + pos
                self._pending += data[pos:]
                return
            self._element(data, pos, self._base + pos)
            pos += size

    def _chunk_run(self, data: bytes, pos: int, end: int) -> int:
        """Step over the whole chunks at data[pos:end] and count their newlines in one pass.

        pg_dump writes one chunk per COPY row when it does not compress, so this loop is the hot path:
        it does little more than unpack each header. Chunks shorter than 6 bytes (the terminator is
        one), from 64 KiB, cut by the end of `data`, or not a chunk at all are left to `_element`, so
        here the last 6 payload bytes are always those of the last chunk. COPY text holds no NUL byte,
        so any NUL beyond those of the headers means a chunk length swallowed headers that follow it.
        """
        start, limit = pos, end - 5
        unpack, header_fix = _CHUNK_HEAD.unpack_from, _HEADER_FIX
        chunks = newlines_fix = nuls_fix = 0
        while pos <= limit:
            sign, size = unpack(data, pos)
            after = pos + 5 + size
            if sign or not 5 < size < 0x10000 or after > end:
                break
            if fix := header_fix[size]:
                newlines_fix += fix & 3
                nuls_fix += fix >> 2
            pos = after
            chunks += 1
        if chunks:
            self._newlines += data.count(b"\n", start, pos) - newlines_fix
            self._tail = data[pos - 6 : pos]
            if self._counting and data.count(b"\0", start, pos) != 4 * chunks - nuls_fix:
                self._nul_in_copy()
        return pos

    def _element(self, buf: bytes, p: int, at: int) -> None:
        """A block header, chunk length or large object OID at buf[p:], stream offset `at`."""
        state = self._state
        if state is _State.BLOCK:
            self._block_header(buf[p], buf[p + 1], int.from_bytes(buf[p + 2 : p + 1 + self._int_len], "little"), at)
            return
        sign = buf[p]
        value = int.from_bytes(buf[p + 1 : p + self._int_len], "little")
        entry = self._entry
        assert entry is not None
        if state is _State.OID:
            if sign > 1 or (sign and not value):
                self._fail(f"{entry.desc} block at offset {self._block_at}: bad large object OID Int at offset {at}")
            elif value:  # OIDs above 2^31 are written as negative Ints
                self.large_objects += 1
                self._inflate = zlib.decompressobj() if self._compression == "gzip" else None
                self._state = _State.LEN
            else:
                self._state = _State.BLOCK
            return
        if sign:
            self._fail(f"{entry.desc} {entry.name}: negative chunk length at offset {at}")
        elif value:
            self._left = value
            self._state = _State.BODY
        elif self._in_blobs:
            self._end_stream(entry, at)
            self._state = _State.OID
        else:
            self._end_stream(entry, at)
            self._end_data_block(entry)
            self._state = _State.BLOCK

    def _block_header(self, kind: int, sign: int, dump_id: int, at: int) -> None:
        """A block starts: it must be the next data entry's, of the right type, where the TOC says."""
        if sign:
            self._fail(f"data block at offset {at}: bad dumpId Int (sign byte 0x{sign:02X})")
            return
        if kind not in (BLK_DATA, BLK_BLOBS):
            self._fail(f"offset {at}: block type {kind}, expected {BLK_DATA} (data) or {BLK_BLOBS} (large objects)")
            return
        if self._next >= len(self._entries):
            self._fail(f"offset {at}: data block for dumpId {dump_id} after the last one the TOC announces")
            return
        entry = self._entries[self._next]
        if dump_id != entry.dump_id:
            self._fail(
                f"offset {at}: {self._misplaced(dump_id)}; expected dumpId {entry.dump_id} ({entry.desc} {entry.name})"
            )
            return
        want = BLK_BLOBS if entry.desc == "BLOBS" else BLK_DATA
        if kind != want:
            self._fail(f"offset {at}: block type {kind} for {entry.desc} {entry.name}, expected {want}")
            return
        if entry.offset is not None and entry.offset != at:
            self._fail(f"{entry.desc} {entry.name}: the TOC says its block is at offset {entry.offset}, it is at {at}")
            return
        self._next += 1
        self.blocks += 1
        self._entry, self._block_at = entry, at
        self._in_blobs = kind == BLK_BLOBS
        self._state = _State.OID if self._in_blobs else _State.LEN
        self._counting = entry.copy and self._compression in ("none", "gzip")
        self._fast = not self._in_blobs and self._compression == "none" and self._int_len == 5
        self._inflate = zlib.decompressobj() if self._compression == "gzip" and not self._in_blobs else None
        self._newlines, self._tail = 0, b"\n"

    def _misplaced(self, dump_id: int) -> str:
        if any(e.dump_id == dump_id for e in self._entries[: self._next]):
            return f"a second data block for dumpId {dump_id}"
        if any(e.dump_id == dump_id for e in self._entries[self._next :]):
            return f"the data block of dumpId {dump_id} out of TOC order"
        if dump_id in self._ids:
            return f"a data block for dumpId {dump_id} ({self._ids[dump_id]}), which has no data"
        return f"a data block for dumpId {dump_id}, which is not in the TOC"

    def _payload(self, buf: bytes, start: int, stop: int) -> None:
        """Payload bytes of a chunk: inflated if compressed, then counted if COPY text."""
        inflate = self._inflate
        if inflate is None:
            if self._counting:
                self._copy_text(buf, start, stop)
            return
        entry = self._entry
        assert entry is not None
        if inflate.eof:
            self._fail(
                f"{entry.desc} {entry.name}: data after the end of its zlib stream (offset {self._base + start})"
            )
            return
        try:
            out = inflate.decompress(memoryview(buf)[start:stop], INFLATE_STEP)
            while True:
                if self._counting:
                    self._copy_text(out, 0, len(out))
                if not inflate.unconsumed_tail:
                    break
                out = inflate.decompress(inflate.unconsumed_tail, INFLATE_STEP)
        except zlib.error as exc:
            self._fail(f"{entry.desc} {entry.name}: corrupt zlib data in the block at offset {self._block_at}: {exc}")
            return
        if inflate.unused_data:
            self._fail(
                f"{entry.desc} {entry.name}: data after the end of its zlib stream (offset {self._base + start})"
            )

    def _copy_text(self, buf: bytes, start: int, stop: int) -> None:
        self._newlines += buf.count(b"\n", start, stop)
        if buf.find(b"\0", start, stop) >= 0:
            self._nul_in_copy()
        if stop - start >= 6:
            self._tail = buf[stop - 6 : stop]
        else:
            self._tail = (self._tail + buf[start:stop])[-6:]

    def _nul_in_copy(self) -> None:
        entry = self._entry
        assert entry is not None
        self._fail(
            f"{entry.desc} {entry.name}: a NUL byte in the COPY data of the block at offset {self._block_at} "
            "(COPY text has none: a chunk length is wrong)"
        )

    def _end_stream(self, entry: DataEntry, at: int) -> None:
        """The Int 0 that ends a data block or a large object: a zlib stream must be complete there."""
        inflate = self._inflate
        if inflate is not None and not inflate.eof:
            what = "a large object" if self._in_blobs else "the data"
            self._fail(f"{entry.desc} {entry.name}: the zlib stream of {what} is incomplete at offset {at}")
        self._inflate = None

    def _end_data_block(self, entry: DataEntry) -> None:
        if self._counting:
            if self._tail != COPY_END:
                self._fail(
                    f"{entry.desc} {entry.name}: the COPY data in the block at offset {self._block_at} "
                    "does not end with the \\. line"
                )
                return
            self.tables[entry.name] = self._newlines - 3
        elif entry.desc == "TABLE DATA":
            self.uncounted.append(entry.name)


