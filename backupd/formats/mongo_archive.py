"""mongodump ``--archive`` format: streaming verifier, writer and reader (docs/formats.md).

The checker applies the rules mongorestore applies while demultiplexing (framing, per-namespace
CRC-64/XZ at each EOF block, every prelude namespace closed) without decoding documents: a backup of
many GB is verified at close to disk speed, and a truncated or corrupted archive is caught before it is
committed. The writer produces the same byte layout as mongodump's multiplexer, so archives made by the
native engine restore with the real mongorestore and pass the same checker.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple, Protocol

import anycrc
import bson
from bson import json_util
from bson.int64 import Int64
from bson.timestamp import Timestamp

from backupd.formats.base import CheckResult, FormatChecker

MAGIC: Final = b"\x6d\xe2\x99\x81"
TERMINATOR: Final = b"\xff\xff\xff\xff"
MIN_BSON: Final = 5
MAX_BSON: Final = 16 * 1024 * 1024
OPLOG_KEY: Final = "oplog"
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
_BATCH: Final = 1 << 20

_CRC64_XZ = anycrc.Model("CRC64-XZ")  # Go's crc64.ECMA table, which is what mongodump uses
_unpack_i32 = struct.Struct("<i").unpack_from

# Parser states: what the next item must be.
_MAGIC, _HEADER, _PRELUDE, _BLOCK, _SEGMENT, _AFTER_EOF, _FAILED = range(7)
_PRELUDE_TYPES: Final = frozenset({"", "collection", "view", "timeseries"})
_HEADER_CACHE_MAX: Final = 4096


def sniff(head: bytes) -> bool:
    """True when `head` starts with the archive magic (an uncompressed mongodump archive)."""
    return head[:4] == MAGIC


def crc64_xz(data: bytes, crc: int = 0) -> int:
    """CRC-64/XZ of `data`, continuing from `crc` (the CRC of everything before it)."""
    return int(_CRC64_XZ.calc(data, crc))


class Namespace(NamedTuple):
    """A data namespace as it appears in namespace headers; the oplog is db "" collection "oplog"."""

    db: str
    collection: str

    @property
    def name(self) -> str:
        return OPLOG_KEY if self.is_oplog else f"{self.db}.{self.collection}"

    @property
    def is_oplog(self) -> bool:
        return self.db == "" and self.collection == "oplog"


@dataclass(frozen=True)
class PreludeEntry:
    """One collection-metadata document of the prelude, with its metadata parsed."""

    db: str
    collection: str
    type: str  # as stored: "", "collection", "view" or "timeseries" ("" in old archives and for the oplog)
    metadata_json: str
    metadata: dict[str, Any]

    @property
    def namespace(self) -> Namespace:
        return Namespace(self.db, self.collection)


@dataclass(frozen=True)
class Prelude:
    """The archive header plus the prelude: what a restore needs before the first document."""

    server_version: str
    tool_version: str
    concurrent_collections: int
    format_version: str
    entries: tuple[PreludeEntry, ...]


@dataclass(eq=False)
class _NsState:
    """Running state of one prelude namespace (shared by its aliases, e.g. a timeseries' buckets)."""

    key: str  # stats key: "db.coll" of the prelude entry, or "oplog"
    kind: str  # collection | view | timeseries | oplog
    data_ns: Namespace
    opened: bool = False
    closed: bool = False
    crc: int = 0
    documents: int = 0
    bytes: int = 0
    crc_status: str = "unchecked"


class ArchiveError(ValueError):
    """Raised by the archive reader when the stream breaks a rule the checker enforces."""


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _decode(raw: bytes) -> dict[str, Any] | str:
    """Decode one small control document; a string is the reason it could not be decoded."""
    try:
        doc = bson.decode(raw)
    except Exception as exc:  # bson raises several types (InvalidBSON, UnicodeDecodeError, ...)
        return _short(exc)
    return dict(doc)


def _ts_fact(raw: bytes | None) -> dict[str, int] | None:
    if raw is None:
        return None
    doc = _decode(raw)
    ts = doc.get("ts") if isinstance(doc, dict) else None
    return {"t": ts.time, "i": ts.inc} if isinstance(ts, Timestamp) else None


def _version_at_least(version: str, major: int, minor: int) -> bool:
    parts = version.lstrip("r").split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def _data_namespace(db: str, coll: str, kind: str, server_version: str) -> Namespace:
    """Where a prelude entry's documents live: timeseries before 8.3 are stored as their buckets."""
    if kind == "timeseries" and not _version_at_least(server_version, 8, 3):
        return Namespace(db, "system.buckets." + coll)
    return Namespace(db, coll)


class MongoArchiveChecker(FormatChecker):
    """Push-based verifier of an uncompressed mongodump archive.

    Holds at most one incomplete item between feeds. Metadata that is not valid Extended JSON is
    reported but does not stop the framing and CRC checks (mongorestore would fail on it only when it
    creates that collection); every other problem stops the check at the first one.
    """

    format: ClassVar[str] = "mongo-archive"

    def __init__(self) -> None:
        self._state = _MAGIC
        self._pending = bytearray()
        self._pending_at = 0  # stream offset of the first pending byte
        self._base = 0  # stream offset of buf[0] in the current _scan
        self._consumed = 0  # stream bytes handed to feed()
        self._errors: list[str] = []
        self._warnings: list[str] = []
        self._facts: dict[str, Any] = {}
        self._entries: list[PreludeEntry] = []
        self._records: list[_NsState] = []
        self._by_ns: dict[Namespace, _NsState] = {}
        self._cur: _NsState | None = None
        self._unclosed = 0
        self._header_cache: dict[bytes, tuple[Namespace, bool, int]] = {}
        self._oplog_first: bytes | None = None
        self._oplog_last: bytes | None = None
        self._result: CheckResult | None = None
        self._prelude_done = False

    # -- public API -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._state == _FAILED or not data:
            return
        at = self._consumed
        self._consumed += len(data)
        pos = 0
        if self._pending:
            pos = self._fill(data)
            if not self._item_complete(self._pending):
                return
            item = bytes(self._pending)
            self._pending.clear()
            self._base = self._pending_at
            self._scan(item, 0)  # a complete item: always consumed whole
            if self._state == _FAILED:
                return
        self._base = at
        end = self._scan(data, pos)
        if end < len(data) and self._state != _FAILED:
            self._pending += data[end:]
            self._pending_at = at + end

    def finish(self) -> CheckResult:
        if self._result is not None:
            return self._result
        if self._state != _FAILED:
            self._check_end()
        stats = {
            "namespaces": {r.key: self._ns_stats(r) for r in self._records},
            "documents": sum(r.documents for r in self._records),
            "bytes": sum(r.bytes for r in self._records),
        }
        oplog = next((r for r in self._records if r.kind == "oplog"), None)
        if oplog is not None:
            self._facts["oplog"] = {
                "entries": oplog.documents,
                "first_ts": _ts_fact(self._oplog_first),
                "last_ts": _ts_fact(self._oplog_last),
            }
        self._result = CheckResult(
            format=self.format,
            ok=not self._errors,
            errors=list(self._errors),
            warnings=list(self._warnings),
            stats=stats,
            facts=dict(self._facts),
        )
        return self._result

    def prelude(self) -> Prelude | None:
        """The header and prelude once the prelude terminator has been read, else None."""
        if not self._prelude_done:
            return None
        return Prelude(
            server_version=self._facts["server_version"],
            tool_version=self._facts["tool_version"],
            concurrent_collections=self._facts["concurrent_collections"],
            format_version=self._facts["format_version"],
            entries=tuple(self._entries),
        )

    # -- chunk handling ---------------------------------------------------------------------------

    def _item_complete(self, item: bytearray) -> bool:
        if self._state == _MAGIC or len(item) < 4:
            return len(item) >= 4
        size = _unpack_i32(item, 0)[0]
        return not MIN_BSON <= size <= MAX_BSON or len(item) >= size

    def _fill(self, data: bytes) -> int:
        """Move bytes from `data` into the pending item until it is complete; return bytes taken."""
        pending = self._pending
        taken = 0
        if len(pending) < 4:
            taken = min(4 - len(pending), len(data))
            pending += data[:taken]
            if len(pending) < 4 or self._state == _MAGIC:
                return taken
        size = _unpack_i32(pending, 0)[0]
        if MIN_BSON <= size <= MAX_BSON and len(pending) < size:
            more = min(size - len(pending), len(data) - taken)
            pending += data[taken : taken + more]
            taken += more
        return taken

    def _scan(self, buf: bytes, pos: int) -> int:
        """Consume every complete item of `buf` from `pos`; return where the incomplete rest starts."""
        n = len(buf)
        while True:
            state = self._state
            if state == _SEGMENT:
                pos = self._run(buf, pos, n)
            elif state == _FAILED:
                return n
            elif state == _MAGIC:
                if n - pos < 4:
                    return pos
                if buf[pos : pos + 4] != MAGIC:
                    self._fail(pos, f"not a mongodump archive: magic is {bytes(buf[pos : pos + 4]).hex()}")
                    return n
                self._state = _HEADER
                pos += 4
                continue
            elif state == _BLOCK and self._unclosed == 0 and pos < n:
                self._fail(pos, f"unexpected bytes after the last namespace was closed ({n - pos}+ bytes)")
                return n
            if n - pos < 4:
                return pos
            size = _unpack_i32(buf, pos)[0]
            if size == -1:
                self._terminator(pos)
                pos += 4
                continue
            if not MIN_BSON <= size <= MAX_BSON:
                self._fail(pos, f"{size} is neither a valid BSON length nor a terminator")
                return n
            end = pos + size
            if end > n:
                return pos
            if buf[end - 1] != 0:
                self._fail(pos, f"BSON document of {size} bytes does not end with a NUL byte")
                return n
            self._document(buf, pos, end)
            pos = end

    def _run(self, buf: bytes, pos: int, n: int) -> int:
        """The hot path: walk a contiguous run of body documents and CRC the run in one call."""
        rec = self._cur
        assert rec is not None
        unpack = _unpack_i32
        start = last = pos
        count = 0
        while True:
            if pos + 4 > n:
                break
            size = unpack(buf, pos)[0]
            if size < MIN_BSON or size > MAX_BSON:
                break
            end = pos + size
            if end > n or buf[end - 1]:
                break
            last = pos
            pos = end
            count += 1
        if count:
            rec.crc = _CRC64_XZ.calc(memoryview(buf)[start:pos], rec.crc)
            if rec.kind == "oplog":
                if rec.documents == 0:
                    self._oplog_first = bytes(buf[start : start + _unpack_i32(buf, start)[0]])
                self._oplog_last = bytes(buf[last:pos])
            rec.documents += count
            rec.bytes += pos - start
        return pos

    # -- items ------------------------------------------------------------------------------------

    def _fail(self, pos: int, message: str) -> None:
        self._errors.append(f"{message} at offset {self._base + pos}")
        self._state = _FAILED
        self._pending.clear()

    def _terminator(self, pos: int) -> None:
        state = self._state
        if state == _PRELUDE:
            self._state = _BLOCK
            self._unclosed = len(self._records)
            self._prelude_done = True
        elif state in (_SEGMENT, _AFTER_EOF):
            self._state = _BLOCK
            self._cur = None
        elif state == _HEADER:
            self._fail(pos, "terminator where the archive header document was expected")
        else:
            self._fail(pos, "consecutive terminators / headerless block")

    def _document(self, buf: bytes, pos: int, end: int) -> None:
        state = self._state
        if state == _BLOCK:
            self._namespace_header(bytes(buf[pos:end]), pos)
        elif state == _PRELUDE:
            self._prelude_entry(bytes(buf[pos:end]), pos)
        elif state == _HEADER:
            self._archive_header(bytes(buf[pos:end]), pos)
        else:  # _AFTER_EOF (documents of a _SEGMENT never get here: _scan hands them to _run)
            name = self._cur.key if self._cur else "?"
            self._fail(pos, f"document after the EOF header of namespace {name}")

    def _archive_header(self, raw: bytes, pos: int) -> None:
        doc = _decode(raw)
        if isinstance(doc, str):
            self._fail(pos, f"archive header is not valid BSON: {doc}")
            return
        fields = {
            "server_version": doc.get("server_version"),
            "tool_version": doc.get("tool_version"),
            "format_version": doc.get("version"),
        }
        for name, value in fields.items():
            if not isinstance(value, str):
                self._fail(pos, f"archive header field {name} is missing or not a string")
                return
        jobs = doc.get("concurrent_collections")
        if not isinstance(jobs, int) or isinstance(jobs, bool):
            self._fail(pos, "archive header field concurrent_collections is missing or not an integer")
            return
        if fields["format_version"] != "0.1":
            self._warnings.append(f"unknown archive format version {fields['format_version']!r}")
        self._facts.update(fields)
        self._facts["concurrent_collections"] = int(jobs)
        self._state = _PRELUDE

    def _prelude_entry(self, raw: bytes, pos: int) -> None:
        doc = _decode(raw)
        if isinstance(doc, str):
            self._fail(pos, f"prelude entry is not valid BSON: {doc}")
            return
        db, coll = doc.get("db", ""), doc.get("collection", "")
        meta_text, kind = doc.get("metadata", ""), doc.get("type", "")
        if not all(isinstance(v, str) for v in (db, coll, meta_text, kind)):
            self._fail(pos, "prelude entry has a non-string db, collection, metadata or type")
            return
        if not coll:
            self._fail(pos, f"prelude entry for database {db!r} has no collection")
            return
        ns = Namespace(db, coll)
        if kind not in _PRELUDE_TYPES:
            self._warnings.append(f"prelude entry {ns.name} has unknown type {kind!r}")
        metadata: dict[str, Any] = {}
        if meta_text:
            try:
                parsed = json_util.loads(meta_text)
            except Exception as exc:  # json and bson raise several types
                parsed = exc
            if isinstance(parsed, dict):
                metadata = parsed
            else:
                why = _short(parsed) if isinstance(parsed, BaseException) else "not a JSON object"
                self._errors.append(
                    f"prelude metadata for {ns.name} at offset {self._base + pos} is not valid Extended JSON: {why}"
                )
        elif not ns.is_oplog:
            self._warnings.append(f"prelude entry {ns.name} has empty metadata")
        self._entries.append(PreludeEntry(db, coll, kind, meta_text, metadata))
        self._register(ns, kind, metadata, pos)

    def _register(self, ns: Namespace, kind: str, metadata: dict[str, Any], pos: int) -> None:
        if ns.is_oplog:
            shown = "oplog"
        elif kind:
            shown = kind
        else:  # old tools wrote no type; a view is recognisable by its options
            options = metadata.get("options")
            shown = "view" if isinstance(options, dict) and "viewOn" in options else "collection"
        data_ns = _data_namespace(ns.db, ns.collection, shown, self._facts.get("server_version", ""))
        aliases = {ns, data_ns}
        if shown == "timeseries":  # accept both layouts: tools disagree on the 8.3 boundary
            aliases.add(Namespace(ns.db, "system.buckets." + ns.collection))
        if any(a in self._by_ns for a in aliases):
            self._fail(pos, f"duplicate prelude entry for {ns.name}")
            return
        rec = _NsState(key=ns.name, kind=shown, data_ns=data_ns)
        self._records.append(rec)
        for alias in aliases:
            self._by_ns[alias] = rec

    def _namespace_header(self, raw: bytes, pos: int) -> None:
        cached = self._header_cache.get(raw)
        if cached is None:
            parsed = self._parse_namespace_header(raw, pos)
            if parsed is None:
                return
            if not parsed[1] and len(self._header_cache) < _HEADER_CACHE_MAX:
                self._header_cache[raw] = parsed
        else:
            parsed = cached
        ns, eof, stored = parsed
        rec = self._by_ns.get(ns)
        if rec is None:
            self._fail(pos, f"namespace header for {ns.name}, which is not in the prelude")
            return
        if rec.closed:
            self._fail(pos, f"namespace header for {ns.name}, which was already closed")
            return
        rec.opened = True
        rec.data_ns = ns
        self._cur = rec
        if not eof:
            self._state = _SEGMENT
            return
        rec.closed = True
        self._unclosed -= 1
        self._state = _AFTER_EOF
        if rec.crc != stored:
            rec.crc_status = "mismatch"
            self._fail(
                pos,
                f"CRC mismatch for namespace {rec.key}: computed {rec.crc:#018x}, stored {stored:#018x}",
            )
            return
        rec.crc_status = "ok"

    def _parse_namespace_header(self, raw: bytes, pos: int) -> tuple[Namespace, bool, int] | None:
        doc = _decode(raw)
        if isinstance(doc, str):
            self._fail(pos, f"namespace header is not valid BSON: {doc}")
            return None
        db, coll = doc.get("db", ""), doc.get("collection", "")
        eof, crc = doc.get("EOF", False), doc.get("CRC", 0)
        if not isinstance(db, str) or not isinstance(coll, str):
            self._fail(pos, "namespace header has a non-string db or collection")
            return None
        if not coll:
            self._fail(pos, f"namespace header (db {db!r}) is missing a collection")
            return None
        if not isinstance(eof, bool) or not isinstance(crc, int) or isinstance(crc, bool):
            self._fail(pos, f"namespace header for {Namespace(db, coll).name} has a bad EOF or CRC field")
            return None
        return Namespace(db, coll), eof, crc & _U64

    # -- end of stream ----------------------------------------------------------------------------

    def _check_end(self) -> None:
        state = self._state
        self._base = 0
        if self._pending:
            need = 4 if len(self._pending) < 4 or state == _MAGIC else _unpack_i32(self._pending, 0)[0]
            self._fail(
                self._pending_at,
                f"stream truncated: incomplete item ({len(self._pending)} of {need} bytes)",
            )
        elif state == _MAGIC:
            self._fail(0, "empty stream: no mongodump archive magic")
        elif state in (_HEADER, _PRELUDE):
            self._fail(self._consumed, "stream ended inside the archive prelude")
        elif state == _SEGMENT:
            name = self._cur.key if self._cur else "?"
            self._fail(self._consumed, f"stream ended inside a data segment of {name}")
        elif state == _AFTER_EOF:
            name = self._cur.key if self._cur else "?"
            self._fail(self._consumed, f"stream ended after the EOF header of {name} (no terminator)")
        elif self._unclosed:
            missing = [r.key for r in self._records if not r.closed]
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            self._fail(
                self._consumed,
                f"archive finished before all collections were closed ({len(missing)} open: {shown})",
            )

    @staticmethod
    def _ns_stats(rec: _NsState) -> dict[str, Any]:
        out: dict[str, Any] = {
            "documents": rec.documents,
            "bytes": rec.bytes,
            "type": rec.kind,
            "crc": rec.crc_status,
        }
        if rec.data_ns.name != rec.key:
            out["data_namespace"] = rec.data_ns.name
        return out


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def describe(result: CheckResult) -> list[str]:
    """Human lines for `backupd inspect`: the header facts, then one line per namespace.

    Errors and warnings are not repeated here; the caller prints them from the result.
    """
    facts, stats = result.facts, result.stats
    lines = [
        f"mongodump archive: server {facts.get('server_version', '?')}, "
        f"tool {facts.get('tool_version', '?')}, {facts.get('concurrent_collections', '?')} parallel "
        f"collections; {stats.get('documents', 0)} documents in "
        f"{len(stats.get('namespaces', {}))} namespaces"
    ]
    namespaces: dict[str, dict[str, Any]] = stats.get("namespaces", {})
    width = max((len(k) for k in namespaces), default=0)
    for key, ns in namespaces.items():
        line = (
            f"  {key:<{width}}  {ns['type']:<10}  {ns['documents']:>10} docs  "
            f"{_human_bytes(ns['bytes']):>10}  crc {ns['crc']}"
        )
        if "data_namespace" in ns:
            line += f"  (data in {ns['data_namespace']})"
        lines.append(line)
    oplog = facts.get("oplog")
    if oplog:
        first, last = oplog.get("first_ts"), oplog.get("last_ts")
        span = f"{first['t']}:{first['i']} .. {last['t']}:{last['i']}" if first and last else "unknown"
        lines.append(f"  oplog: {oplog['entries']} entries, ts {span}")
    return lines


# -- writing ----------------------------------------------------------------------------------------


class BinaryWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


class BinaryReader(Protocol):
    def read(self, size: int, /) -> bytes: ...


def metadata_json(collection: str, metadata: Mapping[str, Any], type: str) -> str:
    """The canonical Extended JSON v2 text mongodump stores for a collection (.metadata.json)."""
    doc: dict[str, Any] = {}
    if metadata.get("options"):
        doc["options"] = metadata["options"]
    doc["indexes"] = list(metadata.get("indexes") or [])
    uuid_hex = _uuid_hex(metadata.get("uuid"))
    if uuid_hex:
        doc["uuid"] = uuid_hex
    doc["collectionName"] = collection
    if type:
        doc["type"] = type
    return json_util.dumps(doc, json_options=json_util.CANONICAL_JSON_OPTIONS, separators=(",", ":"))


def _uuid_hex(value: Any) -> str | None:
    """mongodump writes collection UUIDs as 32 lowercase hex digits without dashes."""
    if value is None or value == "":
        return None
    if isinstance(value, uuidlib.UUID):
        return value.hex
    if isinstance(value, bson.Binary):
        return uuidlib.UUID(bytes=bytes(value)).hex
    return uuidlib.UUID(str(value)).hex


@dataclass(eq=False)
class _WriterNs:
    data_ns: Namespace
    header: bytes
    crc: int = 0
    documents: int = 0
    segments: int = 0
    closed: bool = False


class ArchiveWriter:
    """Writes a mongodump archive to `out`, byte-compatible with mongodump's multiplexer.

    Call order: add_namespace()/add_oplog() for every namespace, begin_body(), then any interleaving of
    write_documents() and close_namespace(), then close(). Namespaces with no documents (empty
    collections, views) still get an empty segment before their EOF block, as mongodump writes them.
    """

    def __init__(
        self, out: BinaryWriter, server_version: str, tool_version: str, concurrent_collections: int = 1
    ) -> None:
        self.out = out
        self.server_version = server_version
        self._phase = 0  # 0 prelude, 1 body, 2 closed
        self._by_ns: dict[Namespace, _WriterNs] = {}
        self._records: list[_WriterNs] = []
        self._current: _WriterNs | None = None
        header = {
            "concurrent_collections": concurrent_collections,
            "version": "0.1",
            "server_version": server_version,
            "tool_version": tool_version,
        }
        out.write(MAGIC + bson.encode(header))

    def add_namespace(self, db: str, coll: str, metadata: Mapping[str, Any], type: str = "collection") -> None:
        """Add one prelude entry. `metadata` holds options/indexes/uuid as listCollections gives them."""
        if self._phase != 0:
            raise ValueError("add_namespace() after begin_body()")
        ns = Namespace(db, coll)
        if not coll:
            raise ValueError("a namespace needs a collection name")
        text = "" if ns.is_oplog else metadata_json(coll, metadata, type)
        data_ns = _data_namespace(db, coll, type, self.server_version)
        aliases = {ns, data_ns}
        if any(a in self._by_ns for a in aliases):
            raise ValueError(f"namespace {ns.name} added twice")
        entry = {"db": db, "collection": coll, "metadata": text, "size": 0, "type": type}
        self.out.write(bson.encode(entry))
        header = bson.encode({"db": data_ns.db, "collection": data_ns.collection, "EOF": False, "CRC": Int64(0)})
        rec = _WriterNs(data_ns=data_ns, header=header)
        self._records.append(rec)
        for alias in aliases:
            self._by_ns[alias] = rec

    def add_oplog(self) -> None:
        """Add the `--oplog` namespace (db "", collection "oplog", empty metadata)."""
        self.add_namespace("", "oplog", {}, "")

    def begin_body(self) -> None:
        """End the prelude; documents may be written from now on."""
        if self._phase != 0:
            raise ValueError("begin_body() called twice")
        self.out.write(TERMINATOR)
        self._phase = 1

    def write_documents(self, db: str, coll: str, raw_docs: Iterable[bytes]) -> int:
        """Append raw BSON documents to a namespace; returns how many were written.

        Documents are checked for a matching length prefix and trailing NUL, so a bad document raises
        here instead of producing an archive that mongorestore rejects.
        """
        rec = self._open(db, coll)
        batch: list[bytes] = []
        size = written = 0
        for doc in raw_docs:
            n = len(doc)
            if n < MIN_BSON or n > MAX_BSON or int.from_bytes(doc[:4], "little") != n or doc[n - 1] != 0:
                raise ValueError(f"not a complete BSON document ({n} bytes) for {rec.data_ns.name}")
            batch.append(doc)
            size += n
            if size >= _BATCH:
                self._emit(rec, batch)
                written += len(batch)
                batch, size = [], 0
        if batch:
            self._emit(rec, batch)
            written += len(batch)
        return written

    def close_namespace(self, db: str, coll: str) -> None:
        """Write the namespace's EOF block carrying its CRC; no more documents may follow for it."""
        rec = self._open(db, coll)
        if self._current is not None:
            self.out.write(TERMINATOR)
            self._current = None
        if rec.segments == 0:
            self.out.write(rec.header + TERMINATOR)
        crc = rec.crc - (1 << 64) if rec.crc >= 1 << 63 else rec.crc  # stored as int64
        ns = rec.data_ns
        eof = bson.encode({"db": ns.db, "collection": ns.collection, "EOF": True, "CRC": Int64(crc)})
        self.out.write(eof + TERMINATOR)
        rec.closed = True

    def close(self) -> None:
        """Finish the archive; every namespace must have been closed. Does not close `out`."""
        if self._phase == 0:
            self.begin_body()
        if self._phase == 2:
            return
        open_ns = [r.data_ns.name for r in self._records if not r.closed]
        if open_ns:
            raise ValueError(f"namespaces never closed: {', '.join(open_ns)}")
        self._phase = 2

    def stats(self) -> dict[str, int]:
        """Documents written per data namespace (the checker reports the same counts)."""
        return {r.data_ns.name: r.documents for r in self._records}

    def _open(self, db: str, coll: str) -> _WriterNs:
        if self._phase != 1:
            raise ValueError("documents can only be written between begin_body() and close()")
        rec = self._by_ns.get(Namespace(db, coll))
        if rec is None:
            raise ValueError(f"namespace {Namespace(db, coll).name} is not in the prelude")
        if rec.closed:
            raise ValueError(f"namespace {rec.data_ns.name} is already closed")
        return rec

    def _emit(self, rec: _WriterNs, batch: list[bytes]) -> None:
        data = b"".join(batch)
        if self._current is not rec:
            self.out.write(rec.header if self._current is None else TERMINATOR + rec.header)
            self._current = rec
            rec.segments += 1
        rec.crc = _CRC64_XZ.calc(data, rec.crc)
        rec.documents += len(batch)
        self.out.write(data)


# -- reading ----------------------------------------------------------------------------------------


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
