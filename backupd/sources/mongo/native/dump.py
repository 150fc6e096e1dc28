"""The native dump: every collection as raw BSON through `ArchiveWriter`, optionally with the oplog written during
the dump (its window checked at both ends, docs/formats.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bson.timestamp import Timestamp
from pymongo.collection import Collection

from backupd import __version__
from backupd.formats.mongo_archive import ArchiveWriter, BinaryWriter
from backupd.formats.mongo_archive.frames import _data_namespace
from backupd.sources.mongo.native.connection import DEFAULT_BATCH, NIL_UUID, RAW, SKIP_DBS, Client
from backupd.sources.mongo.native.namespaces import ALL_NAMESPACES, NsFilter

TOOL_VERSION: Final = f"backupd-native/{__version__}"


@dataclass
class CollSpec:
    """One prelude entry to dump: where its documents are read from and what metadata goes with it."""

    db: str
    name: str
    type: str  # collection | view | timeseries
    options: dict[str, Any]
    uuid: str | None
    indexes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.name}"

    @property
    def metadata(self) -> dict[str, Any]:
        return {"options": self.options, "indexes": self.indexes, "uuid": self.uuid}


def _dumpable(name: str) -> bool:
    """System collections are server state (users, profile, buckets behind their timeseries), not data."""
    return not name.startswith("system.") or name == "system.js"


def list_specs(client: Client, flt: NsFilter) -> list[CollSpec]:
    """Collections and views to dump, with options (listCollections) and indexes (listIndexes)."""
    specs: list[CollSpec] = []
    for db_name in sorted(client.list_database_names()):
        if db_name in SKIP_DBS:
            continue
        db = client[db_name]
        for info in sorted(db.list_collections(), key=lambda i: str(i["name"])):
            name = str(info["name"])
            if not _dumpable(name) or not flt(f"{db_name}.{name}"):
                continue
            kind = str(info.get("type") or "collection")
            uuid = (info.get("info") or {}).get("uuid")
            spec = CollSpec(
                db=db_name,
                name=name,
                type=kind,
                options=dict(info.get("options") or {}),
                uuid=None if uuid is None or str(uuid) == NIL_UUID else uuid,
            )
            if kind != "view":
                spec.indexes = [{k: v for k, v in ix.items() if k != "ns"} for ix in db[name].list_indexes()]
            specs.append(spec)
    return specs


def _raw_docs(coll: Collection[Any], batch_size: int, query: Mapping[str, Any] | None = None) -> Iterator[bytes]:
    raw = coll.with_options(codec_options=RAW)
    for doc in raw.find(dict(query or {}), batch_size=batch_size):
        yield bytes(doc.raw)


# -- oplog window (docs/formats.md) ------------------------------------------------------------------


class OplogError(Exception):
    """The oplog cannot give a consistent window: empty, or it rolled past our start while we dumped."""


def oplog_start(newest: Timestamp | None, oldest_open_txn: Timestamp | None) -> Timestamp:
    """Start at the oldest open transaction's first op if any, else at the newest entry (as mongodump)."""
    if newest is None:
        raise OplogError("the oplog is empty or unreadable")
    if oldest_open_txn is not None and oldest_open_txn < newest:
        return oldest_open_txn
    return newest


def check_window(oldest: Timestamp | None, start: Timestamp) -> None:
    """The oldest entry must still be <= start, or entries we need were already overwritten."""
    if oldest is None or oldest > start:
        got = "empty" if oldest is None else f"{oldest.time}:{oldest.inc}"
        raise OplogError(
            f"oplog overflow: the oldest entry ({got}) is newer than the dump's start "
            f"({start.time}:{start.inc}); enlarge the oplog or dump faster"
        )


def oplog_query(start: Timestamp, end: Timestamp) -> dict[str, Any]:
    return {"ts": {"$gte": start, "$lte": end}}


@dataclass
class OplogSource:
    """Where the oplog lives (local.oplog.rs on a replica set) and the transactions table."""

    oplog: Collection[Any]
    transactions: Collection[Any] | None

    def edge(self, direction: int) -> Timestamp | None:
        for doc in self.oplog.find({}, {"ts": 1}).sort("$natural", direction).limit(1):
            ts = doc.get("ts")
            return ts if isinstance(ts, Timestamp) else None
        return None

    def oldest_open_txn(self) -> Timestamp | None:
        if self.transactions is None:
            return None
        query = {"state": {"$in": ["prepared", "inProgress"]}}
        for doc in self.transactions.find(query).sort("startOpTime.ts", 1).limit(1):
            ts = (doc.get("startOpTime") or {}).get("ts")
            return ts if isinstance(ts, Timestamp) else None
        return None


def ts_fact(ts: Timestamp) -> dict[str, int]:
    return {"t": ts.time, "i": ts.inc}


@dataclass
class DumpStats:
    server_version: str
    counts: dict[str, int]
    oplog: dict[str, Any] | None = None


def dump_native(
    client: Client,
    out: BinaryWriter,
    *,
    flt: NsFilter = ALL_NAMESPACES,
    oplog: OplogSource | None = None,
    batch_size: int = DEFAULT_BATCH,
    server_version: str | None = None,
    on_namespace: Callable[[str], None] | None = None,
) -> DumpStats:
    """Write a whole mongodump-compatible archive of `client`'s data to `out`; counts per namespace.

    With `oplog`, the entries written between the start and end of the dump are appended as the
    `oplog` namespace, so `--oplogReplay` brings a restore to the state at the end of the dump.
    """
    version = server_version or str(client.admin.command("buildInfo")["version"])
    specs = list_specs(client, flt)
    writer = ArchiveWriter(out, version, TOOL_VERSION)
    for spec in specs:
        writer.add_namespace(spec.db, spec.name, spec.metadata, spec.type)
    start: Timestamp | None = None
    if oplog is not None:
        writer.add_oplog()
        start = oplog_start(oplog.edge(-1), oplog.oldest_open_txn())
        check_window(oplog.edge(1), start)
    writer.begin_body()
    counts: dict[str, int] = {}
    for spec in specs:
        if on_namespace is not None:
            on_namespace(spec.ns)
        n = 0
        if spec.type != "view":
            data = _data_namespace(spec.db, spec.name, spec.type, version)
            n = writer.write_documents(spec.db, spec.name, _raw_docs(client[data.db][data.collection], batch_size))
        writer.close_namespace(spec.db, spec.name)
        counts[spec.ns] = n
    facts: dict[str, Any] | None = None
    if oplog is not None:
        assert start is not None
        end = oplog.edge(-1) or start
        check_window(oplog.edge(1), start)
        n = writer.write_documents("", "oplog", _raw_docs(oplog.oplog, batch_size, oplog_query(start, end)))
        writer.close_namespace("", "oplog")
        facts = {"start": ts_fact(start), "end": ts_fact(end), "entries": n}
    writer.close()
    return DumpStats(server_version=version, counts=counts, oplog=facts)
