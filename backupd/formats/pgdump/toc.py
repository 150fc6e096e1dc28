"""The header and TOC of a custom-format archive, read element by element as the stream arrives.

The TOC is parsed by a generator (`TocReader._parse_archive`, after ReadHead and ReadToc in
pg_backup_archiver.c) that asks for exactly the bytes of its next element, so a chunk boundary can fall
anywhere; long strings (function bodies, view definitions) are streamed past, keeping their start. What
it keeps per entry is only what the stats and the data-area walk (blocks.py) need.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from .common import LISTED, SETVAL, entry_name

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

STR_CAP = 1 << 16  # TOC strings longer than this (function bodies, views) are streamed past ...
STR_KEEP = 4096  # ... keeping this much of their start
STR_MAX = 1 << 30  # no PostgreSQL string is longer

_DIGITS = re.compile(r"[0-9]+")
_ENCODING = re.compile(r"SET client_encoding = '([^']*)';")


def sniff(head: bytes) -> bool:
    """True when `head` starts like a custom-format archive (the directory format's toc.dat too: the
    checker then says which format it is). The major version byte 1 tells it from a tar archive whose
    first member is named "PGDMP..."."""
    return head.startswith(MAGIC) and (len(head) < 6 or head[5] == 1)


class Bad(Exception):
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
class DataEntry:
    """A TOC entry whose data block must follow the TOC."""

    dump_id: int
    desc: str
    name: str
    copy: bool  # TABLE DATA as COPY text (not --inserts): rows can be counted
    offset: int | None  # where the TOC says the block starts (None: not recorded, a piped dump)


class TocReader:
    """Reads the header and the TOC; `feed` returns where in its chunk the data area starts.

    After `done`: `entries` (the blocks to expect, in order), `compression`, `int_len` (bytes of an Int),
    `ids` (every dumpId, for messages) and the findings that go into the checker's stats and facts.
    """

    def __init__(self) -> None:
        self.error: str | None = None
        self.done = False
        self.facts: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.pos = 0  # stream offset the parser has reached
        self.where = "the magic"  # what a stream ending now would be cut inside
        self.int_len = 5
        self.compression = "none"
        self.ids: dict[int, str] = {}  # every dumpId -> "DESC name", for messages
        self.entries: list[DataEntry] = []
        self.objects: Counter[str] = Counter()
        self.names: dict[str, list[str]] = {key: [] for key in LISTED.values()}
        self.sequence_values: dict[str, int] = {}
        self.blob_entries = 0
        self._off_len = 9
        self._version = (0, 0)
        self._section = 0  # the latest section other than "none" seen in the TOC
        self._parser: _Parser = self._parse_archive()
        self._want: _Want = next(self._parser)
        self._buf = bytearray()  # the part of the requested element received so far
        self._skip_left = 0

    def feed(self, data: bytes, pos: int = 0) -> int:
        """Hand the parser the elements it asks for from data[pos:]; returns where the data area starts
        in `data` (len(data) if the TOC goes on or is bad)."""
        end = len(data)
        parser = self._parser
        while not self.done:
            want = self._want
            if isinstance(want, _Skip):
                take = min(self._skip_left, end - pos)
                room = want.keep - len(self._buf)
                if room > 0:
                    self._buf += data[pos : pos + min(take, room)]
                pos += take
                self.pos += take
                self._skip_left -= take
                if self._skip_left:
                    return end
                piece = bytes(self._buf)
            else:
                need = want - len(self._buf)
                if end - pos < need:
                    self._buf += data[pos:]
                    self.pos += end - pos
                    return end
                piece = bytes(self._buf) + data[pos : pos + need] if self._buf else data[pos : pos + need]
                pos += need
                self.pos += need
            self._buf.clear()
            try:
                self._want = parser.send(piece)
            except StopIteration:
                self.done = True
                return pos
            except Bad as exc:
                self.done = True
                self.error = str(exc)
                return end
            if isinstance(self._want, _Skip):
                self._skip_left = self._want.size
        return pos

    # -- elements ----------------------------------------------------------------------------------

    def _int(self, what: str) -> Generator[_Want, bytes, int]:
        """An Int: a sign byte (pg_dump writes 0 or 1) and intSize bytes of magnitude, LSB first."""
        at = self.pos
        raw = yield self.int_len
        sign = raw[0]
        value = int.from_bytes(raw[1:], "little")
        if sign > 1 or (sign and not value):
            raise Bad(f"{what} at offset {at}: bad Int (sign byte 0x{sign:02X}, magnitude {value})")
        return -value if sign else value

    def _count(self, what: str, low: int, high: int | None = None) -> Generator[_Want, bytes, int]:
        at = self.pos
        value = yield from self._int(what)
        if value < low or (high is not None and value > high):
            raise Bad(f"{what} at offset {at}: {value} out of range")
        return value

    def _str(self, what: str, keep: int = STR_KEEP) -> Generator[_Want, bytes, str | None]:
        """A Str: an Int length (-1 for NULL) and that many bytes; a long one keeps only its start."""
        at = self.pos
        size = yield from self._int(f"the length of {what}")
        if size < 0:
            if size != -1:
                raise Bad(f"the length of {what} at offset {at}: {size}")
            return None
        if size > STR_MAX:
            raise Bad(f"the length of {what} at offset {at}: {size} bytes, longer than any PostgreSQL string")
        raw = yield (size if size <= STR_CAP else _Skip(size, keep))
        return raw.decode("utf-8", "replace")

    # -- the archive -------------------------------------------------------------------------------

    def _parse_archive(self) -> _Parser:
        """The header and the TOC (ReadHead and ReadToc in pg_backup_archiver.c)."""
        magic = yield 5
        if magic != MAGIC:
            raise Bad(f"not a pg_dump custom archive: magic {magic!r} at offset 0, expected {MAGIC!r}")
        self.where = "the header"
        vmaj, vmin, vrev, int_size, off_size, fmt = yield 6
        version = self._version = (vmaj, vmin)
        self.facts["archive_version"] = f"{vmaj}.{vmin}.{vrev}"
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise Bad(
                f"unsupported archive version {vmaj}.{vmin}.{vrev} at offset 5 "
                f"(known: 1.{MIN_VERSION[1]} to 1.{MAX_VERSION[1]}, PostgreSQL 9.0 to 18)"
            )
        if not 1 <= int_size <= 32:
            raise Bad(f"sanity check on integer size failed: {int_size} at offset 8")
        if not 1 <= off_size <= 32:
            raise Bad(f"sanity check on offset size failed: {off_size} at offset 9")
        if fmt != FORMAT_CUSTOM:
            kind = ARCHIVE_FORMATS.get(fmt, "unknown")
            raise Bad(f"archive format {fmt} ({kind}) at offset 10: only the custom format (1) is one stream")
        self.int_len, self._off_len = 1 + int_size, 1 + off_size
        self.facts.update(int_size=int_size, offset_size=off_size)
        if version >= V_ALGORITHM:
            (algorithm,) = yield 1
            if algorithm not in ALGORITHMS:
                raise Bad(f"unknown compression algorithm {algorithm} at offset 11")
            self.compression = ALGORITHMS[algorithm]
        else:  # a zlib level: -1 is the default level, 0 no compression
            level = yield from self._count("the compression level", -1, 9)
            self.compression = "none" if level == 0 else "gzip"
            self.facts["compression_level"] = level
        self.facts["compression"] = self.compression
        tm = []
        for field, low, high in (("sec", 0, 61), ("min", 0, 59), ("hour", 0, 23), ("mday", 1, 31)):
            tm.append((yield from self._count(f"the creation time ({field})", low, high)))
        for field, low, high in (("mon", 0, 11), ("year", 0, 9999), ("isdst", -1, 1)):
            tm.append((yield from self._count(f"the creation time ({field})", low, high)))
        sec, minute, hour, mday, mon, year, _ = tm
        self.facts["created"] = f"{year + 1900:04}-{mon + 1:02}-{mday:02} {hour:02}:{minute:02}:{sec:02}"
        for fact in ("database", "server_version", "pg_dump_version"):
            value = yield from self._str(f"the {fact.replace('_', ' ')} in the header")
            if value is None:
                raise Bad(f"no {fact.replace('_', ' ')} in the header (NULL string)")
            self.facts[fact] = value
        self.where = "the TOC"
        count = yield from self._count("the TOC entry count", 0)
        for i in range(count):
            self.where = f"TOC entry {i + 1} of {count}"
            yield from self._toc_entry(self.where)
        self.where = "the data area"
        if self.entries:
            self.facts["toc_offsets"] = self._offsets_kind()
        if self.compression in ("lz4", "zstd") and self.entries:
            self.warnings.append(f"{self.compression} data blocks are walked, not decompressed: rows were not counted")

    def _toc_entry(self, label: str) -> Generator[_Want, bytes, None]:
        """One TOC entry (WriteToc); only what the stats and the data walk need is kept."""
        at = self.pos
        dump_id = yield from self._count(f"{label}: dumpId", 1)
        if dump_id in self.ids:
            raise Bad(f"{label} at offset {at}: dumpId {dump_id} used twice")
        had_dumper = yield from self._count(f"{label}: hadDumper", 0, 1)
        for field in ("tableoid", "oid"):
            value = yield from self._str(f"{label}: {field}")
            if value is None or not _DIGITS.fullmatch(value):
                raise Bad(f"{label} at offset {at}: {field} {value!r} is not a decimal OID")
        tag = yield from self._str(f"{label}: tag")
        desc = yield from self._str(f"{label}: desc")
        if not desc:
            raise Bad(f"{label} at offset {at}: no desc")
        section_at = self.pos
        section = yield from self._count(f"{label} ({desc}): section", 1, 4)
        if section != SECTION_NONE:  # pg_dump 9.2+ sorts pre-data, then data, then post-data
            if section < self._section:
                raise Bad(
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
            raise Bad(f"{label} at offset {at}: withOids is {with_oids!r}, not 'false'")
        name = entry_name(namespace, tag)
        if with_oids == "true":
            self.warnings.append(f"{desc} {name} is WITH OIDS, which PostgreSQL 12+ cannot restore")
        while True:
            dep = yield from self._str(f"{label} ({desc}): a dependency")
            if dep is None:
                break
            if not _DIGITS.fullmatch(dep):
                raise Bad(f"{label} at offset {at}: dependency {dep!r} is not a dumpId")
        flag_at = self.pos
        raw = yield self._off_len
        flag, offset = raw[0], int.from_bytes(raw[1:], "little")
        if flag not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise Bad(f"{label} ({desc} {name}): data offset flag {flag} at offset {flag_at}")
        if flag != OFFSET_NO_DATA and section != SECTION_DATA:
            raise Bad(f"{label} ({desc} {name}) has data but is in the {SECTIONS[section]} section")
        if (flag == OFFSET_NO_DATA) != (had_dumper == 0):
            raise Bad(
                f"{label} ({desc} {name}): data offset flag {flag} at offset {flag_at} with hadDumper {had_dumper}"
            )
        if flag != OFFSET_SET and offset:
            raise Bad(f"{label} ({desc} {name}): offset bytes at offset {flag_at + 1} are set but flag is {flag}")
        self.ids[dump_id] = f"{desc} {name}"
        self._record_object(desc, name, defn)
        if flag != OFFSET_NO_DATA:
            is_copy = desc == "TABLE DATA" and copy is not None and copy.startswith("COPY ")
            self.entries.append(DataEntry(dump_id, desc, name, is_copy, offset if flag == OFFSET_SET else None))

    def _record_object(self, desc: str, name: str, defn: str | None) -> None:
        self.objects[desc] += 1
        if desc in LISTED:
            self.names[LISTED[desc]].append(name)
        elif desc == "SEQUENCE SET" and defn and (m := SETVAL.search(defn)):
            self.sequence_values[name] = int(m.group(1))
        elif desc == "BLOB":
            self.blob_entries += 1
        elif desc == "ENCODING" and defn and (m := _ENCODING.search(defn)):
            self.facts["encoding"] = m.group(1)

    def _offsets_kind(self) -> str:
        kinds = {entry.offset is not None for entry in self.entries}
        return "mixed" if len(kinds) > 1 else "set" if True in kinds else "not set"
