"""Streaming check of pg_dump output: custom-format archives (``pg_dump -Fc``) and plain SQL scripts.

Restore drills compare a restored database against the row counts recorded at dump time, so both
checkers count rows exactly, per table, in one pass beside the compressor. docs/formats-pgdump.md has
the byte layout and the reasons for each check; in short:

* **custom** (`PgCustomChecker`): header, the whole TOC, then every data block in TOC order. The TOC is
  written before the data, so a dump written to a pipe has no data offsets (flag 1) and only one
  written to a seekable file gets them filled in afterwards (flag 2); both are accepted, and a real
  offset must be where its block starts. There is no trailer: a truncated archive shows up as a block
  cut short or as data entries whose block never came. Uncompressed COPY data is counted with
  ``bytes.count`` over whole runs of chunks; zlib blocks are inflated (each block, and each large
  object, is one zlib stream); lz4/zstd blocks are only walked.
* **plain** (`PgPlainChecker`): the header comment, the completion comment (followed by nothing but
  comments and the ``\\unrestrict`` line that 15.14+ writes) and the rows of each ``COPY ... FROM
  stdin;`` block up to its ``\\.`` line.

COPY text escapes newlines and backslashes inside values, so a row is a line and ``\\.`` alone on a
line can only be the terminator. Names in the stats are "schema.tag" as pg_dump tags its entries (a
function's tag carries its argument types, a trigger's is "table trigger"), which the plain format's
``-- Name:`` comments repeat, so both formats of one database give the same stats.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from .base import CheckResult, FormatChecker

MAGIC = b"PGDMP"
MIN_VERSION = (1, 12)  # PostgreSQL 9.0: no layout change since, except the three below
MAX_VERSION = (1, 16)  # PostgreSQL 17 and 18
V_TABLEAM = (1, 14)  # 12+: TOC entries carry the table access method
V_ALGORITHM = (1, 15)  # 16+: the header holds a 1-byte algorithm instead of a zlib level Int
V_RELKIND = (1, 16)  # 17+: TOC entries carry the relkind as an Int
ARCHIVE_FORMATS = {0: "unknown", 1: "custom", 2: "files", 3: "tar", 4: "null", 5: "directory"}
FORMAT_CUSTOM = 1
ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}
SECTIONS = {1: "none", 2: "pre-data", 3: "data", 4: "post-data"}
SECTION_NONE, SECTION_DATA = 1, 3
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
BLK_DATA, BLK_BLOBS = 1, 3

STR_CAP = 1 << 16  # TOC strings longer than this (function bodies, views) are streamed past ...
STR_KEEP = 4096  # ... keeping this much of their start
STR_MAX = 1 << 30  # no PostgreSQL string is longer
INFLATE_STEP = 1 << 20  # most bytes one zlib call may produce: a zlib bomb costs time, not memory
COPY_END = b"\n\\.\n\n\n"  # the terminator line and the two blank lines pg_dump writes after it

_SETVAL = re.compile(r"SELECT pg_catalog\.setval\('(?:[^']|'')*', (-?\d+), (?:true|false)\);")
_DIGITS = re.compile(r"[0-9]+")
_ENCODING = re.compile(r"SET client_encoding = '([^']*)';")
# TOC entry kinds listed by name in the stats (the "objects" counts cover every kind)
LISTED = {
    "SCHEMA": "schemas",
    "VIEW": "views",
    "MATERIALIZED VIEW": "materialized_views",
    "FUNCTION": "functions",
    "PROCEDURE": "procedures",
    "SEQUENCE": "sequences",
    "TRIGGER": "triggers",
}

_CHUNK_HEAD = struct.Struct("<BI")  # an Int when intSize is 4 (every platform PostgreSQL runs on)
# Chunk headers sit between the COPY text. A run of chunks is counted whole, so what the headers add
# to the counts is taken off again: a chunk length below 64 KiB is `00 lo hi 00 00`, that is four NUL
# bytes (three if hi and lo are both non-zero) and a newline for each of lo, hi that is 0x0A. Per
# length: newlines + 4 * (one NUL fewer); 0 for most lengths, so the loop only tests it.
_HEADER_FIX = bytes(((i & 0xFF) == 10) + ((i >> 8) == 10) + 4 * (i > 0xFF and (i & 0xFF) != 0) for i in range(1 << 16))


def sniff(head: bytes) -> bool:
    """True when `head` starts like a custom-format archive (the directory format's toc.dat too: the
    checker then says which format it is). The major version byte 1 tells it from a tar archive whose
    first member is named "PGDMP..."."""
    return head.startswith(MAGIC) and (len(head) < 6 or head[5] == 1)


class _Bad(Exception):
    """The archive is malformed; the message is the one-line error."""


class _Skip:
    """A request to the stream driver: step over `size` bytes, send back the first `keep` of them."""

    __slots__ = ("keep", "size")

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep


_Want = int | _Skip  # what the TOC parser asks for next: exactly this many bytes, or a skip
_Parser = Generator[_Want, bytes, None]


@dataclass(slots=True)
class _DataEntry:
    """A TOC entry whose data block must follow the TOC."""

    dump_id: int
    desc: str
    name: str
    copy: bool  # TABLE DATA as COPY text (not --inserts): rows can be counted
    offset: int | None  # where the TOC says the block starts (None: not recorded, a piped dump)


def _name(namespace: str | None, tag: str | None) -> str:
    tag = tag or ""
    return f"{namespace}.{tag}" if namespace else tag


class _State(Enum):
    """Where the data-area walker is: each state but BODY reads one fixed-size element next."""

    BLOCK = auto()  # a block header (type byte, dumpId) or the end of the archive
    LEN = auto()  # a chunk length; 0 ends the block (or the large object)
    OID = auto()  # a large object's OID; 0 ends the BLOBS block
    BODY = auto()  # inside a chunk's payload


class PgCustomChecker(FormatChecker):
    """Checks a ``pg_dump --format=custom`` stream and counts its rows and large objects.

    stats: {"tables": {"schema.table": rows}, "rows": total, "large_objects": n, "toc_entries": n,
    "objects": {desc: count}, "data_blocks": n, "schemas"/"views"/"materialized_views"/"functions"/
    "procedures"/"sequences"/"triggers": ["schema.tag", ...], "sequence_values": {"schema.seq": value}}.
    Tables whose rows could not be counted (lz4/zstd data, --inserts) are in "uncounted_tables" instead
    of "tables". facts: database, server_version, pg_dump_version, archive_version, compression
    (none/gzip/lz4/zstd; gzip is zlib streams), compression_level (archives before 1.15), created (the
    dumper's local time), toc_offsets (set: written to a file; not set: written to a pipe), encoding,
    int_size, offset_size.

    Memory: one small record per TOC entry (names, for the stats), the TOC string being read (at most
    STR_CAP) and one block's zlib state; nothing grows with the data.
    """

    format = "pg-custom"

    def __init__(self) -> None:
        self._error: str | None = None
        self._result: CheckResult | None = None
        self._warnings: list[str] = []
        self._facts: dict[str, Any] = {}
        self._base = 0  # stream offset of the current feed's first byte
        # header and TOC
        self._parser: _Parser | None = self._parse_archive()
        self._want: _Want = next(self._parser)
        self._buf = bytearray()  # the part of the requested element received so far
        self._pos = 0  # stream offset the TOC parser has reached
        self._where = "the magic"
        self._skip_left = 0
        self._int_len = 5
        self._off_len = 9
        self._version = (0, 0)
        self._compression = "none"
        self._ids: dict[int, str] = {}  # every dumpId -> "DESC name", for messages
        self._entries: list[_DataEntry] = []
        self._objects: Counter[str] = Counter()
        self._names: dict[str, list[str]] = {key: [] for key in LISTED.values()}
        self._sequence_values: dict[str, int] = {}
        self._blob_entries = 0
        self._section = 0  # the latest section other than "none" seen in the TOC
        # data area
        self._state = _State.BLOCK
        self._pending = bytearray()  # a fixed-size element split between feeds
        self._pending_at = 0
        self._next = 0  # index in _entries of the block expected next
        self._entry: _DataEntry | None = None
        self._block_at = 0
        self._left = 0  # payload bytes of the current chunk still to come
        self._fast = False  # uncompressed COPY data: whole runs of chunks at C speed
        self._counting = False
        self._in_blobs = False
        self._inflate: Any = None  # zlib decompressobj of the current block or large object
        self._newlines = 0
        self._tail = b"\n"  # the last 6 payload bytes, after a virtual newline before the first
        self._tables: dict[str, int] = {}
        self._uncounted: list[str] = []
        self._large_objects = 0
        self._blocks = 0

    # -- stream handling ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._error is not None or self._result is not None or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        pos = 0
        if self._parser is not None:
            pos = self._feed_toc(data)
        if self._parser is None and self._error is None and pos < len(data):
            self._feed_data(data, pos)
        self._base += len(data)

    def finish(self) -> CheckResult:
        if self._result is None:
            if self._error is None:
                self._check_end()
            errors = [] if self._error is None else [self._error]
            self._result = CheckResult(
                format=self.format,
                ok=not errors,
                errors=errors,
                warnings=list(self._warnings),
                stats=self._stats(),
                facts=dict(self._facts),
            )
        return self._result

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def _check_end(self) -> None:
        total = self._base
        if self._parser is not None:
            if total == 0:
                self._fail("empty stream: no pg_dump archive header")
            else:
                self._fail(f"truncated: the stream ends at offset {total}, inside {self._where}")
            return
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
        elif self._blob_entries and self._large_objects not in (0, self._blob_entries):
            self._warnings.append(
                f"the TOC lists {self._blob_entries} large objects, the data blocks hold {self._large_objects}"
            )

    def _stats(self) -> dict[str, Any]:
        tables = dict(sorted(self._tables.items()))
        stats: dict[str, Any] = {
            "tables": tables,
            "rows": sum(tables.values()),
            "large_objects": self._large_objects,
            "toc_entries": sum(self._objects.values()),
            "data_blocks": self._blocks,
            "objects": dict(sorted(self._objects.items())),
        }
        if self._uncounted:
            stats["uncounted_tables"] = sorted(self._uncounted)
        stats.update({key: sorted(names) for key, names in self._names.items()})
        stats["sequence_values"] = dict(sorted(self._sequence_values.items()))
        return stats

    # -- header and TOC ----------------------------------------------------------------------------

    def _feed_toc(self, data: bytes) -> int:
        """Hand the TOC parser the elements it asks for; returns where the data area starts in `data`
        (or len(data) if the TOC goes on)."""
        pos, end = 0, len(data)
        parser = self._parser
        assert parser is not None
        while True:
            want = self._want
            if isinstance(want, _Skip):
                take = min(self._skip_left, end - pos)
                room = want.keep - len(self._buf)
                if room > 0:
                    self._buf += data[pos : pos + min(take, room)]
                pos += take
                self._pos += take
                self._skip_left -= take
                if self._skip_left:
                    return end
                piece = bytes(self._buf)
            else:
                need = want - len(self._buf)
                if end - pos < need:
                    self._buf += data[pos:]
                    self._pos += end - pos
                    return end
                piece = bytes(self._buf) + data[pos : pos + need] if self._buf else data[pos : pos + need]
                pos += need
                self._pos += need
            self._buf.clear()
            try:
                self._want = parser.send(piece)
            except StopIteration:
                self._parser = None
                return pos
            except _Bad as exc:
                self._parser = None
                self._fail(str(exc))
                return end
            if isinstance(self._want, _Skip):
                self._skip_left = self._want.size

    def _int(self, what: str) -> Generator[_Want, bytes, int]:
        """An Int: a sign byte (pg_dump writes 0 or 1) and intSize bytes of magnitude, LSB first."""
        at = self._pos
        raw = yield self._int_len
        sign = raw[0]
        value = int.from_bytes(raw[1:], "little")
        if sign > 1 or (sign and not value):
            raise _Bad(f"{what} at offset {at}: bad Int (sign byte 0x{sign:02X}, magnitude {value})")
        return -value if sign else value

    def _count(self, what: str, low: int, high: int | None = None) -> Generator[_Want, bytes, int]:
        at = self._pos
        value = yield from self._int(what)
        if value < low or (high is not None and value > high):
            raise _Bad(f"{what} at offset {at}: {value} out of range")
        return value

    def _str(self, what: str, keep: int = STR_KEEP) -> Generator[_Want, bytes, str | None]:
        """A Str: an Int length (-1 for NULL) and that many bytes; a long one keeps only its start."""
        at = self._pos
        size = yield from self._int(f"the length of {what}")
        if size < 0:
            if size != -1:
                raise _Bad(f"the length of {what} at offset {at}: {size}")
            return None
        if size > STR_MAX:
            raise _Bad(f"the length of {what} at offset {at}: {size} bytes, longer than any PostgreSQL string")
        raw = yield (size if size <= STR_CAP else _Skip(size, keep))
        return raw.decode("utf-8", "replace")

    def _parse_archive(self) -> _Parser:
        """The header and the TOC, element by element (ReadHead and ReadToc in pg_backup_archiver.c)."""
        magic = yield 5
        if magic != MAGIC:
            raise _Bad(f"not a pg_dump custom archive: magic {magic!r} at offset 0, expected {MAGIC!r}")
        self._where = "the header"
        vmaj, vmin, vrev, int_size, off_size, fmt = yield 6
        version = self._version = (vmaj, vmin)
        self._facts["archive_version"] = f"{vmaj}.{vmin}.{vrev}"
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise _Bad(
                f"unsupported archive version {vmaj}.{vmin}.{vrev} at offset 5 "
                f"(known: 1.{MIN_VERSION[1]} to 1.{MAX_VERSION[1]}, PostgreSQL 9.0 to 18)"
            )
        if not 1 <= int_size <= 32:
            raise _Bad(f"sanity check on integer size failed: {int_size} at offset 8")
        if not 1 <= off_size <= 32:
            raise _Bad(f"sanity check on offset size failed: {off_size} at offset 9")
        if fmt != FORMAT_CUSTOM:
            kind = ARCHIVE_FORMATS.get(fmt, "unknown")
            raise _Bad(f"archive format {fmt} ({kind}) at offset 10: only the custom format (1) is one stream")
        self._int_len, self._off_len = 1 + int_size, 1 + off_size
        self._facts.update(int_size=int_size, offset_size=off_size)
        if version >= V_ALGORITHM:
            (algorithm,) = yield 1
            if algorithm not in ALGORITHMS:
                raise _Bad(f"unknown compression algorithm {algorithm} at offset 11")
            self._compression = ALGORITHMS[algorithm]
        else:  # a zlib level: -1 is the default level, 0 no compression
            level = yield from self._count("the compression level", -1, 9)
            self._compression = "none" if level == 0 else "gzip"
            self._facts["compression_level"] = level
        self._facts["compression"] = self._compression
        tm = []
        for field, low, high in (("sec", 0, 61), ("min", 0, 59), ("hour", 0, 23), ("mday", 1, 31)):
            tm.append((yield from self._count(f"the creation time ({field})", low, high)))
        for field, low, high in (("mon", 0, 11), ("year", 0, 9999), ("isdst", -1, 1)):
            tm.append((yield from self._count(f"the creation time ({field})", low, high)))
        sec, minute, hour, mday, mon, year, _ = tm
        self._facts["created"] = f"{year + 1900:04}-{mon + 1:02}-{mday:02} {hour:02}:{minute:02}:{sec:02}"
        for fact in ("database", "server_version", "pg_dump_version"):
            value = yield from self._str(f"the {fact.replace('_', ' ')} in the header")
            if value is None:
                raise _Bad(f"no {fact.replace('_', ' ')} in the header (NULL string)")
            self._facts[fact] = value
        self._where = "the TOC"
        count = yield from self._count("the TOC entry count", 0)
        for i in range(count):
            self._where = f"TOC entry {i + 1} of {count}"
            yield from self._toc_entry(self._where)
        self._where = "the data area"
        if self._entries:
            self._facts["toc_offsets"] = self._offsets_kind()
        if self._compression in ("lz4", "zstd") and self._entries:
            self._warnings.append(
                f"{self._compression} data blocks are walked, not decompressed: rows were not counted"
            )

    def _toc_entry(self, label: str) -> Generator[_Want, bytes, None]:
        """One TOC entry (WriteToc); only what the stats and the data walk need is kept."""
        at = self._pos
        dump_id = yield from self._count(f"{label}: dumpId", 1)
        if dump_id in self._ids:
            raise _Bad(f"{label} at offset {at}: dumpId {dump_id} used twice")
        had_dumper = yield from self._count(f"{label}: hadDumper", 0, 1)
        for field in ("tableoid", "oid"):
            value = yield from self._str(f"{label}: {field}")
            if value is None or not _DIGITS.fullmatch(value):
                raise _Bad(f"{label} at offset {at}: {field} {value!r} is not a decimal OID")
        tag = yield from self._str(f"{label}: tag")
        desc = yield from self._str(f"{label}: desc")
        if not desc:
            raise _Bad(f"{label} at offset {at}: no desc")
        section_at = self._pos
        section = yield from self._count(f"{label} ({desc}): section", 1, 4)
        if section != SECTION_NONE:  # pg_dump 9.2+ sorts pre-data, then data, then post-data
            if section < self._section:
                raise _Bad(
                    f"{label} ({desc}) at offset {at}: a {SECTIONS[section]} entry after a "
                    f"{SECTIONS[self._section]} one (section Int at offset {section_at})"
                )
            self._section = section
        defn = yield from self._str(f"{label} ({desc}): defn")
        yield from self._str(f"{label} ({desc}): dropStmt", keep=0)
        copy = yield from self._str(f"{label} ({desc}): copyStmt")
        namespace = yield from self._str(f"{label} ({desc}): namespace")
        yield from self._str(f"{label} ({desc}): tablespace")
        if self._version >= V_TABLEAM:
            yield from self._str(f"{label} ({desc}): tableam")
        if self._version >= V_RELKIND:
            yield from self._count(f"{label} ({desc}): relkind", 0, 255)
        yield from self._str(f"{label} ({desc}): owner")
        with_oids = yield from self._str(f"{label} ({desc}): withOids")
        if with_oids not in ("false", "true"):
            raise _Bad(f"{label} at offset {at}: withOids is {with_oids!r}, not 'false'")
        name = _name(namespace, tag)
        if with_oids == "true":
            self._warnings.append(f"{desc} {name} is WITH OIDS, which PostgreSQL 12+ cannot restore")
        while True:
            dep = yield from self._str(f"{label} ({desc}): a dependency")
            if dep is None:
                break
            if not _DIGITS.fullmatch(dep):
                raise _Bad(f"{label} at offset {at}: dependency {dep!r} is not a dumpId")
        flag_at = self._pos
        raw = yield self._off_len
        flag, offset = raw[0], int.from_bytes(raw[1:], "little")
        if flag not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise _Bad(f"{label} ({desc} {name}): data offset flag {flag} at offset {flag_at}")
        if flag != OFFSET_NO_DATA and section != SECTION_DATA:
            raise _Bad(f"{label} ({desc} {name}) has data but is in the {SECTIONS[section]} section")
        if (flag == OFFSET_NO_DATA) != (had_dumper == 0):
            raise _Bad(
                f"{label} ({desc} {name}): data offset flag {flag} at offset {flag_at} with hadDumper {had_dumper}"
            )
        if flag != OFFSET_SET and offset:
            raise _Bad(f"{label} ({desc} {name}): offset bytes at offset {flag_at + 1} are set but flag is {flag}")
        self._ids[dump_id] = f"{desc} {name}"
        self._record_object(desc, name, defn)
        if flag != OFFSET_NO_DATA:
            is_copy = desc == "TABLE DATA" and copy is not None and copy.startswith("COPY ")
            self._entries.append(_DataEntry(dump_id, desc, name, is_copy, offset if flag == OFFSET_SET else None))

    def _record_object(self, desc: str, name: str, defn: str | None) -> None:
        self._objects[desc] += 1
        if desc in LISTED:
            self._names[LISTED[desc]].append(name)
        elif desc == "SEQUENCE SET" and defn and (m := _SETVAL.search(defn)):
            self._sequence_values[name] = int(m.group(1))
        elif desc == "BLOB":
            self._blob_entries += 1
        elif desc == "ENCODING" and defn and (m := _ENCODING.search(defn)):
            self._facts["encoding"] = m.group(1)

    def _offsets_kind(self) -> str:
        kinds = {entry.offset is not None for entry in self._entries}
        return "mixed" if len(kinds) > 1 else "set" if True in kinds else "not set"

    # -- data area ---------------------------------------------------------------------------------

    def _feed_data(self, data: bytes, pos: int) -> None:
        end = len(data)
        while pos < end and self._error is None:
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
                self._large_objects += 1
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
        self._blocks += 1
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

    def _end_stream(self, entry: _DataEntry, at: int) -> None:
        """The Int 0 that ends a data block or a large object: a zlib stream must be complete there."""
        inflate = self._inflate
        if inflate is not None and not inflate.eof:
            what = "a large object" if self._in_blobs else "the data"
            self._fail(f"{entry.desc} {entry.name}: the zlib stream of {what} is incomplete at offset {at}")
        self._inflate = None

    def _end_data_block(self, entry: _DataEntry) -> None:
        if self._counting:
            if self._tail != COPY_END:
                self._fail(
                    f"{entry.desc} {entry.name}: the COPY data in the block at offset {self._block_at} "
                    "does not end with the \\. line"
                )
                return
            self._tables[entry.name] = self._newlines - 3
        elif entry.desc == "TABLE DATA":
            self._uncounted.append(entry.name)


# -- plain format ---------------------------------------------------------------------------------

PLAIN_HEADER = (b"--", b"-- PostgreSQL database dump", b"--")
_PLAIN_STARTS = (b"--\n-- PostgreSQL database dump\n--\n", b"--\r\n-- PostgreSQL database dump\r\n--\r\n")
_COMPLETE = b"-- PostgreSQL database dump complete"
_ENTRY_COMMENT = re.compile(
    rb"-- (Data for )?Name: (.*?); Type: (.*?); Schema: (.*?); Owner: (.*?)(?:; Tablespace: .*)?"
)
_DUMPED = re.compile(rb"-- Dumped (from database|by pg_dump) version (.+)")
_RESTRICT = re.compile(rb"\\(restrict|unrestrict) (\S+)\s*")
_LO_OPEN = b"SELECT pg_catalog.lo_open("
LINE_CAP = 1 << 20  # a longer line (an INSERT, a function body) is only looked at this far


def sniff_plain(head: bytes) -> bool:
    """True when `head` starts with pg_dump's plain-format header comment."""
    return head.startswith(_PLAIN_STARTS)


class PgPlainChecker(FormatChecker):
    """Checks a ``pg_dump --format=plain`` script: header, completion comment, \\restrict keys, rows.

    pg_dump heads every TOC entry with a ``-- Name: tag; Type: desc; Schema: ns; Owner: o`` comment
    (``-- Data for Name:`` for data), so the script yields the same stats as the custom format:
    {"tables", "rows", "large_objects", "objects", the name lists, "sequence_values"}; a COPY is only
    taken as table data right after a TABLE DATA comment, never from inside a function body. facts:
    server_version, pg_dump_version, database (with --create), restrict (15.14+ wraps the script in
    ``\\restrict KEY`` ... ``\\unrestrict KEY``, and the two keys must match).

    Statements are read line by line (a partial line waits, capped at LINE_CAP); COPY data is not: it
    is scanned for its ``\\.`` line with bytes.find and counted with bytes.count, so memory is constant.
    """

    format = "pg-plain"

    def __init__(self) -> None:
        self._error: str | None = None
        self._result: CheckResult | None = None
        self._warnings: list[str] = []
        self._facts: dict[str, Any] = {}
        self._bytes = 0
        self._line = bytearray()  # a partial line, capped at LINE_CAP
        self._lineno = 0
        self._eol = b"\n"
        # the TOC entry whose statements are being read, from its comment
        self._desc = ""
        self._entry_name = ""
        self._first_statement = False
        # COPY data
        self._copy: str | None = None
        self._copy_line = 0
        self._copy_rows = 0
        self._copy_prev = b""  # the last bytes of "\n" + the COPY data: a terminator may straddle chunks
        # the end of the script
        self._after_complete = False  # the completion comment and only comments since
        self._restrict: bytes | None = None
        self._restrict_line = 0
        self._unrestricted = False
        # findings
        self._tables: dict[str, int] = {}
        self._uncounted: list[str] = []
        self._large_objects = 0
        self._objects: Counter[str] = Counter()
        self._names: dict[str, list[str]] = {key: [] for key in LISTED.values()}
        self._sequence_values: dict[str, int] = {}

    def feed(self, data: bytes) -> None:
        if self._error is not None or self._result is not None or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._bytes += len(data)
        pos, end = 0, len(data)
        while pos < end and self._error is None:
            if self._copy is not None:
                pos = self._copy_data(data, pos, end)
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._keep(data, pos, end)
                return
            if self._line:
                self._keep(data, pos, nl)
                line = bytes(self._line)
                self._line.clear()
            else:
                line = data[pos : min(nl, pos + LINE_CAP)]
            pos = nl + 1
            self._on_line(line)

    def finish(self) -> CheckResult:
        if self._result is None:
            self._result = self._build()
        return self._result

    def _build(self) -> CheckResult:
        if self._line and self._error is None:  # the last line has no newline
            line = bytes(self._line)
            self._line.clear()
            self._on_line(line)
        errors: list[str] = []
        if self._error is not None:
            errors.append(self._error)
        elif self._bytes == 0:
            errors.append("empty stream: no pg_dump header")
        elif self._lineno < len(PLAIN_HEADER):
            errors.append("truncated: the stream ends inside the pg_dump header comment")
        elif self._copy is not None:
            errors.append(
                f"truncated: the stream ends inside the COPY data of {self._copy} (line {self._copy_line}, no \\. line)"
            )
        elif not self._after_complete:
            errors.append("no '-- PostgreSQL database dump complete' comment at the end: dump truncated or failed")
        elif self._restrict is not None and not self._unrestricted:
            errors.append(
                f"\\restrict at line {self._restrict_line} has no \\unrestrict after the completion comment: "
                "dump truncated"
            )
        tables = dict(sorted(self._tables.items()))
        stats: dict[str, Any] = {
            "tables": tables,
            "rows": sum(tables.values()),
            "large_objects": self._large_objects,
            "objects": dict(sorted(self._objects.items())),
        }
        if self._uncounted:
            stats["uncounted_tables"] = sorted(self._uncounted)
        stats.update({key: sorted(names) for key, names in self._names.items()})
        stats["sequence_values"] = dict(sorted(self._sequence_values.items()))
        return CheckResult(
            format=self.format,
            ok=not errors,
            errors=errors,
            warnings=list(self._warnings),
            stats=stats,
            facts=dict(self._facts),
        )

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def _keep(self, data: bytes, start: int, stop: int) -> None:
        room = LINE_CAP - len(self._line)
        if room > 0:
            self._line += data[start : min(stop, start + room)]

    # -- statements --------------------------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        self._lineno += 1
        if line.endswith(b"\r"):
            line = line[:-1]
            if self._lineno == 1:
                self._eol = b"\r\n"
        if self._lineno <= len(PLAIN_HEADER):
            if line != PLAIN_HEADER[self._lineno - 1]:
                shown = line[:60].decode("utf-8", "replace")
                self._fail(f"line {self._lineno}: not a pg_dump plain-format header: {shown!r}")
            return
        if not line:
            return
        if line.startswith(b"--"):
            self._comment(line)
        elif line.startswith(b"\\") and (m := _RESTRICT.fullmatch(line)):
            self._meta(m.group(1), m.group(2))
        else:
            self._statement(line)

    def _comment(self, line: bytes) -> None:
        if line == _COMPLETE:
            self._after_complete = True
        elif m := _ENTRY_COMMENT.fullmatch(line):
            tag, desc, schema = (g.decode("utf-8", "replace") for g in m.group(2, 3, 4))
            self._desc, self._entry_name = desc, _name(None if schema == "-" else schema, tag)
            self._first_statement = True
            self._objects[desc] += 1
            if desc in LISTED:
                self._names[LISTED[desc]].append(self._entry_name)
            elif desc == "DATABASE":
                self._facts["database"] = tag
        elif m := _DUMPED.fullmatch(line):
            fact = "server_version" if m.group(1) == b"from database" else "pg_dump_version"
            self._facts[fact] = m.group(2).decode("utf-8", "replace").strip()

    def _meta(self, command: bytes, key: bytes) -> None:
        """``\\restrict KEY`` opens the script (15.14+), ``\\unrestrict KEY`` follows its completion comment."""
        if command == b"restrict":
            if self._restrict is not None:
                self._fail(f"line {self._lineno}: a second \\restrict (the first is at line {self._restrict_line})")
            self._restrict, self._restrict_line = key, self._lineno
            self._facts["restrict"] = True
        elif self._restrict is None:
            self._fail(f"line {self._lineno}: \\unrestrict without a \\restrict")
        elif key != self._restrict:
            self._fail(
                f"line {self._lineno}: \\unrestrict key differs from that of \\restrict (line {self._restrict_line})"
            )
        elif not self._after_complete:
            self._fail(f"line {self._lineno}: \\unrestrict before the '-- PostgreSQL database dump complete' comment")
        else:
            self._unrestricted = True

    def _statement(self, line: bytes) -> None:
        if self._unrestricted:
            self._fail(f"line {self._lineno}: a statement after \\unrestrict")
            return
        self._after_complete = False  # that comment was inside a string, not the end
        first, self._first_statement = self._first_statement, False
        desc = self._desc
        if desc == "TABLE DATA" and first:
            if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
                self._copy, self._copy_line, self._copy_rows = self._entry_name, self._lineno, 0
                self._copy_prev = b"\n"
                self._tables.setdefault(self._entry_name, 0)
            else:  # --inserts: INSERT statements, not counted
                self._uncounted.append(self._entry_name)
        elif desc == "SEQUENCE SET" and (m := _SETVAL.search(line.decode("utf-8", "replace"))):
            self._sequence_values[self._entry_name] = int(m.group(1))
        elif desc == "BLOBS" and line.startswith(_LO_OPEN):
            self._large_objects += 1

    # -- COPY data ---------------------------------------------------------------------------------

    def _copy_data(self, data: bytes, pos: int, end: int) -> int:
        """Count the rows in data[pos:end] up to the ``\\.`` line; returns where statements resume."""
        table = self._copy
        assert table is not None
        term = b"\n\\." + self._eol
        keep = len(term) - 1
        prev = self._copy_prev
        j = (prev + data[pos : pos + keep]).find(term)  # a terminator begun in the previous chunk
        if j >= 0:
            stop = pos + j + len(term) - len(prev)
            rows = 0
        else:
            i = data.find(term, pos, end)
            if i < 0:
                self._copy_rows += data.count(b"\n", pos, end)
                self._copy_prev = (prev + data[max(pos, end - keep) : end])[-keep:]
                return end
            stop = i + len(term)
            rows = data.count(b"\n", pos, i + 1)
        rows += self._copy_rows
        self._tables[table] += rows
        self._lineno += rows + 1
        self._copy = None
        return stop


def describe(result: CheckResult) -> list[str]:
    """Human-readable summary for `backupd inspect` (either pg_dump format)."""
    facts, stats = result.facts, result.stats
    if result.format == "pg-custom":
        head = f"pg_dump custom archive {facts.get('archive_version', '?')}"
    else:
        head = "pg_dump plain SQL script"
    if facts.get("database"):
        head += f" of database {facts['database']}"
    head += f", pg_dump {facts.get('pg_dump_version', '?')}, server {facts.get('server_version', '?')}"
    lines = [head]
    if result.format == "pg-custom":
        level = facts.get("compression_level")
        compression = str(facts.get("compression", "?"))
        if level not in (None, 0):
            compression += " (default level)" if level == -1 else f" (level {level})"
        offsets = {"set": "set (written to a file)", "not set": "not set (written to a pipe)"}
        lines.append(
            f"created {facts.get('created', '?')} (dumper's local time), compression {compression}, "
            f"data offsets {offsets.get(facts.get('toc_offsets') or '', facts.get('toc_offsets') or '-')}"
        )
    elif "restrict" in facts:
        lines.append("wrapped in \\restrict ... \\unrestrict (pg_dump 15.14+)")
    lines.append("status: OK" if result.ok else "status: FAILED")
    lines += [f"error: {e}" for e in result.errors]
    lines += [f"warning: {w}" for w in result.warnings]
    tables: dict[str, int] = stats.get("tables", {})
    summary = f"{len(tables)} tables, {stats.get('rows', 0)} rows, {stats.get('large_objects', 0)} large objects"
    if "toc_entries" in stats:
        summary = f"{stats['toc_entries']} TOC entries, {stats.get('data_blocks', 0)} data blocks; " + summary
    lines.append(summary)
    width = max((len(name) for name in tables), default=0)
    lines += [f"  {name:<{width}}  {rows:>12} rows" for name, rows in tables.items()]
    if stats.get("uncounted_tables"):
        lines.append(f"rows not counted: {', '.join(stats['uncounted_tables'])}")
    values: dict[str, int] = stats.get("sequence_values", {})
    for label in LISTED.values():
        names: list[str] = stats.get(label, [])
        if label == "sequences":
            names = [f"{n} = {values[n]}" if n in values else n for n in names]
        lines.append(f"{label.replace('_', ' ')}: {', '.join(names) if names else '-'}")
    return lines
