"""Writes mongodump archives byte-compatible with mongodump's multiplexer (the native engine's output)."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson import json_util
from bson.int64 import Int64

from backupd.formats.mongo_archive.frames import (
    _BATCH,
    _CRC64_XZ,
    MAGIC,
    MAX_BSON,
    MIN_BSON,
    TERMINATOR,
    BinaryWriter,
    Namespace,
    _data_namespace,
)


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

