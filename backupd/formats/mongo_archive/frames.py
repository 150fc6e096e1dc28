"""The archive's framing: magic, terminator, BSON length rules, CRC-64/XZ, namespaces and prelude types.

Shared by the checker, the writer and the reader (docs/formats.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

import anycrc
import bson
from bson.timestamp import Timestamp

MAGIC: Final = b"\x6d\xe2\x99\x81"
TERMINATOR: Final = b"\xff\xff\xff\xff"
MIN_BSON: Final = 5
MAX_BSON: Final = 16 * 1024 * 1024
OPLOG_KEY: Final = "oplog"
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
_BATCH: Final = 1 << 20

_CRC64_XZ = anycrc.Model("CRC64-XZ")  # Go's crc64.ECMA table, which is what mongodump uses
_unpack_i32 = struct.Struct("<i").unpack_from


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


class BinaryWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


class BinaryReader(Protocol):
    def read(self, size: int, /) -> bytes: ...

