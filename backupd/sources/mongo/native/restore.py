"""The native restore: an archive from either engine (or a real mongodump) read through the checker, collections
created from the prelude, documents inserted in batches, the oplog replayed once the archive is known intact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson.raw_bson import RawBSONDocument
from bson.son import SON
from pymongo.errors import PyMongoError

from backupd.engine.compression import open_decompressed
from backupd.errors import StepError, UsageError
from backupd.formats.mongo_archive import ArchiveError, BinaryReader, Namespace, PreludeEntry, open_archive
from backupd.formats.mongo_archive.frames import _data_namespace
from backupd.sources.mongo.native.connection import (
    DEFAULT_BATCH,
    INSERT_BYTES,
    RAW,
    SKIP_DBS,
    Client,
    connect,
    explain,
    host_label,
    mongo_step,
)
from backupd.sources.mongo.native.dump import _dumpable
from backupd.sources.mongo.native.namespaces import NsRenamer, split_ns
from backupd.sources.mongo.native.replay import _Spool, replay_oplog


@dataclass
class _Target:
    entry: PreludeEntry
    ns: Namespace  # where the prelude entry goes
    data: Namespace  # where its documents go (a timeseries' buckets)


def _open_source(source: BinaryReader | Path | str, stack: contextlib.ExitStack) -> BinaryReader:
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            _, fh = open_decompressed(path)
        except OSError as exc:
            raise StepError("restore", f"{path}: {exc.strerror or exc}") from None
        return stack.enter_context(fh)
    return source


def _create_options(entry: PreludeEntry) -> dict[str, Any]:
    return dict(entry.metadata.get("options") or {})


def _is_view(entry: PreludeEntry) -> bool:
    """Old tools wrote no type: a view is then recognisable by its options."""
    return entry.type == "view" or (not entry.type and "viewOn" in _create_options(entry))


def _index_specs(entry: PreludeEntry) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in dict(ix).items() if k != "ns"}
        for ix in entry.metadata.get("indexes") or []
        if ix.get("name") != "_id_"
    ]



def restore_archive(
    source: BinaryReader | Path | str,
    target_uri: str,
    *,
    drop: bool = False,
    ns_from: str | Sequence[str] | None = None,
    ns_to: str | Sequence[str] | None = None,
    oplog_replay: bool = False,
    password: str | None = None,
    tmp_dir: Path | None = None,
    batch_docs: int = DEFAULT_BATCH,
) -> dict[str, int]:
    """Restore an archive (a stream, or a file compressed or not) into `target_uri`.

    Returns restored documents per target namespace (and `oplog`: entries applied). Non-empty target
    collections are refused unless `drop`. (`restore --mongorestore` goes to `tools.run_mongorestore` instead.)
    """
    sources = [ns_from] if isinstance(ns_from, str) else list(ns_from or [])
    targets = [ns_to] if isinstance(ns_to, str) else list(ns_to or [])
    rename = NsRenamer(sources, targets)
    host = host_label(target_uri)
    with contextlib.ExitStack() as stack:
        stream = _open_source(source, stack)
        try:
            prelude, docs = open_archive(stream)
        except ArchiveError as exc:
            raise StepError("restore", f"archive: {exc}", host=host) from None
        client = stack.enter_context(connect(target_uri, password))
        with mongo_step("restore", host):
            plan = _plan(prelude.entries, prelude.server_version, rename)
            _prepare_targets(client, plan, drop, host)
            oplog_spool = _Spool(tmp_dir) if oplog_replay else None
            if oplog_spool is not None:
                stack.callback(oplog_spool.fh.close)
            counts = _load_documents(client, plan, docs, oplog_spool, batch_docs, host)
            for t in plan.values():
                if not _is_view(t.entry):
                    specs = _index_specs(t.entry)
                    if specs:
                        client[t.ns.db].command(SON([("createIndexes", t.ns.collection), ("indexes", specs)]))
            if oplog_spool is not None:
                counts["oplog"] = replay_oplog(client, oplog_spool, rename)
        return counts


def _plan(entries: Sequence[PreludeEntry], server_version: str, rename: NsRenamer) -> dict[Namespace, _Target]:
    """Map every data namespace of the archive to its target; refuse two sources landing on one target."""
    plan: dict[Namespace, _Target] = {}
    seen: dict[Namespace, str] = {}
    for entry in entries:
        if entry.namespace.is_oplog or not _dumpable(entry.collection) or entry.db in SKIP_DBS:
            continue  # users, roles and server state are not restored as data (as mongorestore does)
        ns = split_ns(rename(entry.namespace.name))
        if ns in seen:
            raise UsageError(f"namespaces {seen[ns]} and {entry.namespace.name} would both restore into {ns.name}")
        seen[ns] = entry.namespace.name
        src_data = _data_namespace(entry.db, entry.collection, entry.type, server_version)
        dst_data = _data_namespace(ns.db, ns.collection, entry.type, server_version)
        plan[src_data] = _Target(entry, ns, dst_data)
    return plan


def _prepare_targets(client: Client, plan: Mapping[Namespace, _Target], drop: bool, host: str) -> None:
    """Check every target first, so a refusal happens before anything is written; then create them."""
    existing: dict[str, set[str]] = {}
    for t in plan.values():
        names = existing.setdefault(t.ns.db, set(client[t.ns.db].list_collection_names()))
        if (
            t.ns.collection in names
            and not drop
            and (_is_view(t.entry) or client[t.ns.db][t.data.collection].find_one({}, {"_id": 1}) is not None)
        ):
            raise StepError(
                "restore",
                f"namespace {t.ns.name} already exists and is not empty (use drop to replace it)",
                host=host,
            )
    for t in plan.values():
        db = client[t.ns.db]
        if t.ns.collection in existing[t.ns.db]:
            if not drop:
                continue  # an empty collection: restore into it as it is
            db.drop_collection(t.ns.collection)
        db.command(SON([("create", t.ns.collection), *_create_options(t.entry).items()]))


def _load_documents(
    client: Client,
    plan: Mapping[Namespace, _Target],
    docs: Iterator[tuple[Namespace, bytes]],
    oplog_spool: _Spool | None,
    batch_docs: int,
    host: str,
) -> dict[str, int]:
    counts = {t.ns.name: 0 for t in plan.values()}
    batch: list[RawBSONDocument] = []
    size = 0
    current: _Target | None = None

    def flush() -> None:
        nonlocal size
        if batch and current is not None:
            coll = client[current.data.db].get_collection(current.data.collection, codec_options=RAW)
            coll.insert_many(batch, ordered=True, bypass_document_validation=True)
            counts[current.ns.name] += len(batch)
            batch.clear()
            size = 0

    try:
        for ns, raw in docs:
            if ns.is_oplog:
                if oplog_spool is not None:
                    oplog_spool.add(raw)
                continue
            target = plan.get(ns)
            if target is None:
                continue
            if target is not current:
                flush()
                current = target
            batch.append(RawBSONDocument(raw))
            size += len(raw)
            if len(batch) >= batch_docs or size >= INSERT_BYTES:
                flush()
        flush()
    except ArchiveError as exc:
        raise StepError("restore", f"archive: {exc} (namespaces restored so far are incomplete)", host=host) from None
    except PyMongoError as exc:
        where = current.ns.name if current else "?"
        raise StepError("restore", f"namespace {where}: {explain(exc)}", host=host) from None
    return counts
