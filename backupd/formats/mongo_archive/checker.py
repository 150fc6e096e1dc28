"""The streaming verifier of an uncompressed mongodump archive: framing, per-namespace CRC, closed namespaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from bson import json_util
from bson.timestamp import Timestamp

from backupd.formats.base import CheckResult, FormatChecker
from backupd.formats.mongo_archive.frames import (
    _CRC64_XZ,
    _U64,
    MAGIC,
    MAX_BSON,
    MIN_BSON,
    Namespace,
    Prelude,
    PreludeEntry,
    _data_namespace,
    _decode,
    _short,
    _unpack_i32,
)

# Parser states: what the next item must be.
_MAGIC, _HEADER, _PRELUDE, _BLOCK, _SEGMENT, _AFTER_EOF, _FAILED = range(7)
_PRELUDE_TYPES: Final = frozenset({"", "collection", "view", "timeseries"})
_HEADER_CACHE_MAX: Final = 4096


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



def _ts_fact(raw: bytes | None) -> dict[str, int] | None:
    if raw is None:
        return None
    doc = _decode(raw)
    ts = doc.get("ts") if isinstance(doc, dict) else None
    return {"t": ts.time, "i": ts.inc} if isinstance(ts, Timestamp) else None



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

