"""The native MongoDB engine: dump to, and restore from, the mongodump archive format with pymongo alone.

Backups must not depend on the MongoDB Database Tools being installed, so this engine reads every
collection as raw BSON (documents are never decoded, so every type survives byte for byte) and writes
them through `ArchiveWriter`, whose output the real mongorestore and our own checker both accept. The
restore reads archives from either engine (or a real mongodump) through the same checker, so a broken
archive stops the restore instead of loading garbage. Memory stays constant: one cursor batch on the
way out, one insert batch on the way in, the oplog spooled to an unlinked temp file.
"""

from __future__ import annotations

import contextlib
import re
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)

from backupd import __version__
from backupd.engine.compression import open_decompressed
from backupd.errors import StepError, UsageError
from backupd.formats.mongo_archive import (
    ArchiveError,
    ArchiveWriter,
    BinaryReader,
    BinaryWriter,
    Namespace,
    PreludeEntry,
    _data_namespace,
    open_archive,
)

TOOL_VERSION: Final = f"backupd-native/{__version__}"
RAW: Final = CodecOptions(document_class=RawBSONDocument)
DEFAULT_BATCH: Final = 1000
INSERT_BYTES: Final = 8 << 20  # well under the 48 MB wire limit, small enough to keep memory flat
SKIP_DBS: Final = frozenset({"local", "config"})  # mongodump skips them too
NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"
SELECTION_TIMEOUT_MS: Final = 15000
Client = MongoClient[dict[str, Any]]

# -- connections and errors -------------------------------------------------------------------------


def host_label(uri: str) -> str:
    """The hosts of a URI, without credentials or options, for error lines."""
    rest = uri.split("://", 1)[-1]
    hosts = re.split(r"[/?]", rest, maxsplit=1)[0]
    return hosts.rsplit("@", 1)[-1] or "?"


_AUTH_PARAM = re.compile(r"^auth(source|mechanism|mechanismproperties)=", re.IGNORECASE)


def strip_credentials(uri: str) -> str:
    """The URI without user and auth options: hello and buildInfo need no login, so a probe needs none."""
    scheme, sep, rest = uri.partition("://")
    hosts, slash, tail = rest.partition("/")
    hosts = hosts.rsplit("@", 1)[-1]
    path, _q, query = tail.partition("?")
    kept = [p for p in query.split("&") if p and not _AUTH_PARAM.match(p)]
    return f"{scheme}{sep}{hosts}{slash}{path}" + (f"?{'&'.join(kept)}" if kept else "")


def connect(uri: str, password: str | None = None, read_preference: str | None = None) -> Client:
    """A client for `uri`; the password is passed as a keyword, never put in the URI or argv."""
    opts: dict[str, Any] = {"appname": "backupd"}
    if password is not None:
        opts["password"] = password
    if read_preference:
        opts["readPreference"] = read_preference
    if "serverselectiontimeoutms" not in uri.lower():
        opts["serverSelectionTimeoutMS"] = SELECTION_TIMEOUT_MS
    try:
        return MongoClient(uri, **opts)
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise StepError("connect", f"invalid uri: {_first_line(exc)}", host=host_label(uri)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    text = text.split(", full error:")[0].split(" (configured timeouts:")[0].split(", Timeout:")[0]
    return " ".join(text.split())[:300]


def explain(exc: BaseException) -> str:
    """One line saying what went wrong talking to a server, in an operator's terms."""
    if isinstance(exc, OperationFailure):
        if exc.code == 18 or "authentication failed" in str(exc).lower():
            return "authentication failed (check the user in uri and password_file)"
        if exc.code == 13:
            return f"not authorized: {_first_line(exc)}"
        return _first_line(exc)
    if isinstance(exc, ConnectionFailure):
        return f"cannot reach the server: {_first_line(exc)}"
    if isinstance(exc, PyMongoError):
        return _first_line(exc)
    # pymongo lets some handshake failures escape as plain exceptions (e.g. a server without SASL)
    return f"connection handshake failed: {type(exc).__name__}: {_first_line(exc)}"


@contextlib.contextmanager
def mongo_step(step: str, host: str) -> Iterator[None]:
    """Turn any driver failure inside the block into one StepError line naming host and step."""
    try:
        yield
    except StepError:
        raise
    except (PyMongoError, KeyError, OSError) as exc:
        raise StepError(step, explain(exc), host=host) from None


@dataclass(frozen=True)
class ServerInfo:
    version: str
    set_name: str | None
    me: str | None
    secondary: bool

    @property
    def replica_set(self) -> bool:
        return self.set_name is not None


def server_info(client: Client) -> ServerInfo:
    """ping + hello (through the client's read preference) + buildInfo."""
    hello = client.admin.command("hello", read_preference=client.read_preference)
    version = str(client.admin.command("buildInfo", read_preference=client.read_preference)["version"])
    set_name = hello.get("setName")
    return ServerInfo(
        version=version,
        set_name=str(set_name) if set_name else None,
        me=hello.get("me"),
        secondary=bool(hello.get("secondary")),
    )


def pin_member(client: Client, info: ServerInfo, uri: str, password: str | None) -> Client:
    """A direct client to the one member the read preference chose, so data and oplog come from it."""
    if not info.replica_set or not info.me or "directconnection=true" in uri.lower():
        return client
    credentials = getattr(client.options, "credentials", None)
    direct = direct_uri(uri, info.me, getattr(credentials, "source", None))
    pinned = connect(direct, password, "secondaryPreferred")
    client.close()
    return pinned


def direct_uri(uri: str, member: str, auth_source: str | None = None) -> str:
    """`uri` pointed at one member (`host:port`) with directConnection=true, keeping its credentials, path
    and options. A `mongodb+srv://` URI implies TLS and may take authSource from DNS: both are written out,
    since a plain `mongodb://` URI would silently drop them."""
    scheme, rest = uri.split("://", 1)
    creds = rest.rsplit("@", 1)[0] + "@" if "@" in rest.split("/", 1)[0] else ""
    tail = rest.split("/", 1)[1] if "/" in rest else ""
    path, _, query = tail.partition("?")
    keep = [p for p in query.split("&") if p and not p.lower().startswith(("replicaset=", "readpreference="))]
    keys = {p.split("=", 1)[0].lower() for p in keep}
    if scheme == "mongodb+srv":
        if not keys & {"tls", "ssl"}:
            keep.append("tls=true")
        if auth_source and "authsource" not in keys:
            keep.append(f"authSource={auth_source}")
    keep.append("directConnection=true")
    return f"mongodb://{creds}{member}/{path}?{'&'.join(keep)}"


# -- namespace patterns -----------------------------------------------------------------------------


def ns_pattern(pattern: str) -> re.Pattern[str]:
    """mongodump --nsInclude/--nsExclude: `*` matches any run of characters, `\\` escapes the next one."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class NsFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, ns: str) -> bool:
        if self.include and not any(ns_pattern(p).fullmatch(ns) for p in self.include):
            return False
        return not any(ns_pattern(p).fullmatch(ns) for p in self.exclude)


_VAR = re.compile(r"\$([A-Za-z0-9_]+)\$")


class NsRenamer:
    """mongorestore --nsFrom/--nsTo: `$name$` in a source pattern captures any text, reused in the target.

    Several pairs may be given; the first source pattern that matches the whole namespace wins. `\\`
    escapes a literal character. A namespace no pattern matches keeps its name.
    """

    def __init__(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        if len(sources) != len(targets):
            raise UsageError("ns_from and ns_to need the same number of patterns")
        self.rules: list[tuple[re.Pattern[str], str]] = []
        for src, dst in zip(sources, targets, strict=True):
            src_vars, dst_vars = _VAR.findall(src), _VAR.findall(dst)
            if sorted(src_vars) != sorted(set(src_vars)) or set(src_vars) != set(dst_vars):
                raise UsageError(f"ns_from {src!r} and ns_to {dst!r} must use the same $variables$, once each")
            self.rules.append((self._compile(src), dst))

    @staticmethod
    def _compile(src: str) -> re.Pattern[str]:
        out, i = [], 0
        while i < len(src):
            m = _VAR.match(src, i)
            if m:
                out.append(f"(?P<{m.group(1)}>.*?)")
                i = m.end()
                continue
            if src[i] == "\\" and i + 1 < len(src):
                out.append(re.escape(src[i + 1]))
                i += 2
                continue
            out.append(re.escape(src[i]))
            i += 1
        return re.compile("".join(out), re.DOTALL)

    def __call__(self, ns: str) -> str:
        for rx, dst in self.rules:
            m = rx.fullmatch(ns)
            if m:
                return _expand(dst, m.groupdict())
        return ns


def _expand(template: str, values: Mapping[str, str]) -> str:
    return _VAR.sub(lambda v: values[v.group(1)], template)


def split_ns(ns: str) -> Namespace:
    db, sep, coll = ns.partition(".")
    if not sep or not db or not coll:
        raise UsageError(f"namespace {ns!r} must be DB.COLLECTION")
    return Namespace(db, coll)


# -- dump -------------------------------------------------------------------------------------------


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
    flt: NsFilter = NsFilter(),
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


# -- restore ----------------------------------------------------------------------------------------


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


class _Spool:
    """Oplog entries parked in an unlinked temp file until the archive is known to be intact."""

    def __init__(self, tmp_dir: Path | None) -> None:
        self.fh: IO[bytes] = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 - closed by the restore
        self.count = 0

    def add(self, raw: bytes) -> None:
        self.fh.write(raw)
        self.count += 1

    def __iter__(self) -> Iterator[bytes]:
        self.fh.seek(0)
        while head := self.fh.read(4):
            size = struct.unpack("<i", head)[0]
            yield head + self.fh.read(size - 4)


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


# -- oplog replay -----------------------------------------------------------------------------------


class OplogApplyError(Exception):
    pass


def diff_to_updates(diff: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Translate a `$v: 2` oplog diff into update documents applied in order.

    Fields: `u` updated and `i` inserted fields ($set), `d` deleted ($unset), `s<field>` a nested diff;
    array diffs (`a: true`) have `l` (new length: truncation, applied first), `u<idx>`, `s<idx>`.
    """
    first: list[dict[str, Any]] = []
    sets: dict[str, Any] = {}
    unsets: dict[str, Any] = {}
    later: list[dict[str, Any]] = []
    is_array = diff.get("a") is True
    for key, value in diff.items():
        if is_array:
            if key == "a":
                continue
            if key == "l":
                first.append({"$push": {prefix.rstrip("."): {"$each": [], "$slice": int(value)}}})
            elif key.startswith("u"):
                sets[prefix + key[1:]] = value
            elif key.startswith("s"):
                later += diff_to_updates(value, f"{prefix}{key[1:]}.")
            else:
                raise OplogApplyError(f"unknown array diff field {key!r}")
        elif key in ("u", "i"):
            sets.update({prefix + k: v for k, v in value.items()})
        elif key == "d":
            unsets.update({prefix + k: "" for k in value})
        elif key.startswith("s"):
            later += diff_to_updates(value, f"{prefix}{key[1:]}.")
        else:
            raise OplogApplyError(f"unknown diff field {key!r}")
    update: dict[str, Any] = {}
    if sets:
        update["$set"] = sets
    if unsets:
        update["$unset"] = unsets
    return first + ([update] if update else []) + later


def apply_op(client: Client, op: Mapping[str, Any], rename: Callable[[str], str]) -> bool:
    """Apply one decoded oplog entry as applyOps would (inserts upsert); False if it was skipped."""
    kind = op.get("op")
    ns = str(op.get("ns", ""))
    if kind == "n" or not ns:
        return False
    if kind == "c":
        o = op.get("o") or {}
        if "applyOps" in o:
            return any([apply_op(client, inner, rename) for inner in o["applyOps"]])
        raise OplogApplyError(
            f"oplog command {next(iter(o), '?')!r} on {ns} is not supported by the native restore; use mongorestore"
        )
    target = split_ns(rename(ns))
    if target.db in SKIP_DBS or target.collection.startswith("system."):
        return False
    coll = client[target.db][target.collection]
    o = dict(op.get("o") or {})
    if kind == "i":
        coll.replace_one({"_id": o["_id"]}, o, upsert=True)
    elif kind == "d":
        coll.delete_one(o)
    elif kind == "u":
        query = dict(op.get("o2") or {})
        if o.get("$v") == 2 and "diff" in o:
            for update in diff_to_updates(o["diff"]):
                coll.update_one(query, update)
        elif any(k.startswith("$") for k in o):
            o.pop("$v", None)
            coll.update_one(query, o)
        else:
            coll.replace_one(query, o)
    else:
        raise OplogApplyError(f"unknown oplog op {kind!r} on {ns}")
    return True


def replay_oplog(client: Client, entries: _Spool | Sequence[bytes], rename: Callable[[str], str]) -> int:
    """Apply captured entries in order (the archive's CRC was verified before this runs)."""
    applied = 0
    for raw in entries:
        op = bson.decode(raw)
        try:
            applied += apply_op(client, op, rename)
        except (OplogApplyError, KeyError) as exc:
            ts = op.get("ts")
            when = f"{ts.time}:{ts.inc}" if isinstance(ts, Timestamp) else "?"
            raise StepError("oplog replay", f"entry ts {when}: {exc}") from None
    return applied
