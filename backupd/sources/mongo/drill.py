"""MongoDB restores through the native restorer (or mongorestore) and drills under renamed databases."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pymongo.errors import PyMongoError

from backupd.engine.compression import open_decompressed
from backupd.errors import BackupdError, StepError, UsageError
from backupd.formats.mongo_archive import ArchiveError, open_archive
from backupd.scratch.mongo import MongoServer
from backupd.sources.base import (
    DRILL_PASSWORD_ENV,
    Check,
    DrillContext,
    DrillResult,
    artifacts,
    compare,
    drill_password,
)
from backupd.sources.mongo.config import MongoJob
from backupd.sources.mongo.native import SKIP_DBS, connect, host_label, mongo_step, restore_archive
from backupd.sources.mongo.tools import run_mongorestore
from backupd.store.backups import StoredBackup


@dataclass(frozen=True)
class MongoOptions:
    """mongorestore's --nsFrom/--nsTo pairs, --oplogReplay, and which tool does the work."""

    ns_from: tuple[str, ...] = ()
    ns_to: tuple[str, ...] = ()
    oplog_replay: bool = False
    tool: str = "native"  # or "mongorestore"


def mongo_restore(
    path: Path, uri: str, *, drop: bool, password: str | None, options: MongoOptions = MongoOptions()
) -> dict[str, int]:
    """Native restore (no mongorestore needed) unless asked for mongorestore; non-empty collections are
    refused unless `drop`."""
    if options.tool == "mongorestore":
        pairs = list(zip(options.ns_from, options.ns_to, strict=True))
        return run_mongorestore(
            path, uri, password=password, drop=drop, ns_pairs=pairs, oplog_replay=options.oplog_replay
        )
    _, stream = open_decompressed(path)
    with stream:
        return restore_archive(
            stream,
            uri,
            drop=drop,
            password=password,
            ns_from=list(options.ns_from),
            ns_to=list(options.ns_to),
            oplog_replay=options.oplog_replay,
        )


MONGO_DB_NAME_MAX = 63  # bytes
ExitFn = Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], bool]


def drill_db_name(backup_id: str, db: str) -> str:
    """`drill_{backupid}_{db}`: a name no real database has. Over 63 bytes it is cut and ends in a hash of
    `db`, so two long source names still land in different databases."""
    name = f"drill_{backup_id.lower()}_{db}"
    if len(name.encode()) <= MONGO_DB_NAME_MAX:
        return name
    head = name.encode()[: MONGO_DB_NAME_MAX - 9].decode("utf-8", "ignore")
    return f"{head}_{hashlib.sha256(db.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class MongoPlace:
    """Where a MongoDB drill restores; on a shared `[drill] target` (`backup_id` set) under renamed databases."""

    uri: str
    password: str | None = field(default=None, repr=False)
    backup_id: str | None = None
    databases: tuple[str, ...] = ()

    def db(self, source: str) -> str:
        return source if self.backup_id is None else drill_db_name(self.backup_id, source)

    def renames(self) -> tuple[list[str], list[str]]:
        """ns_from / ns_to (mongorestore --nsFrom/--nsTo) moving every source database to its drill name."""
        return [f"{d}.$coll$" for d in self.databases], [f"{self.db(d)}.$coll$" for d in self.databases]


def archive_databases(path: Path) -> list[str]:
    """The databases a restore of `path` writes, from the archive's own prelude: the manifest does not decide
    which names get renamed, so nothing can slip through under its real name."""

    _, stream = open_decompressed(path)
    with stream:
        try:
            prelude, _docs = open_archive(stream)
        except ArchiveError as exc:
            raise BackupdError(f"drill: {path.name}: {exc}") from None
    return sorted({e.db for e in prelude.entries if not e.namespace.is_oplog and e.db not in SKIP_DBS})


def mongo_target_uri(target: str) -> str:
    if not target.startswith(("mongodb://", "mongodb+srv://")):
        raise UsageError("drill: [drill] target of a MongoDB job must be a mongodb:// URI")
    if re.match(r"^mongodb(\+srv)?://[^/@]*:[^/@]*@", target):
        raise UsageError(f"drill: [drill] target must not contain a password: use ${DRILL_PASSWORD_ENV}")
    return target


def _refuse_used(place: MongoPlace, names: list[str], host: str) -> None:
    """A drill database that already holds collections is someone's data (or a leftover the operator should
    look at): the drill neither restores into it nor drops it."""

    with connect(place.uri, place.password) as client, mongo_step("drill", host):
        present = set(client.list_database_names())
        used = [n for n in names if n in present and client[n].list_collection_names()]
    if used:
        raise StepError(
            "drill", f"database {used[0]} already exists and is not empty: refusing to overwrite it", host=host
        )


def _drop_databases(place: MongoPlace, names: list[str]) -> list[str]:
    """Drop each database; the names that could not be dropped."""


    failed: list[str] = []
    try:
        client = connect(place.uri, place.password)  # a fresh client: an interrupt may have broken the others
    except BackupdError:
        return names
    with client:
        for name in names:
            try:
                client.drop_database(name)
            except PyMongoError:
                failed.append(name)
    return failed


def _mongo_dropper(place: MongoPlace, names: list[str], host: str) -> ExitFn:
    """An ExitStack exit: drops the drill's databases however the drill ends. A failed drop fails an otherwise
    good drill (copies of real data would stay behind), but never hides an error or interrupt in flight."""

    def drop(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        failed = _drop_databases(place, names)
        if failed and exc_type is None:
            raise StepError("drill cleanup", f"could not drop {', '.join(failed)}: drop them by hand", host=host)
        return False

    return drop


def mongo_place(job: MongoJob, backup: StoredBackup, arts: list[dict[str, Any]], ctx: DrillContext) -> MongoPlace:
    """A throwaway server, or the configured `[drill] target`: there the drill's databases must be free, and
    their drop is registered on `stack` before anything is restored."""
    if not job.drill.target:
        server = ctx.stack.enter_context(MongoServer(base_dir=ctx.work))
        if server.kind != "mongod":  # said in the report and the catalog, never passed off as a real mongod
            ctx.notes.append(
                f"restored into the {server.kind} stand-in (no mongod on this machine): document counts are "
                "proven, collection options and index directions are not; install mongod or set [drill] target"
            )
        return MongoPlace(server.uri)

    dbs = sorted({d for art in arts for d in archive_databases(backup.path / art["file"])})
    password = drill_password(job.password_file)
    place = MongoPlace(mongo_target_uri(job.drill.target), password, backup.backup_id, tuple(dbs))
    host = host_label(place.uri)
    names = sorted({place.db(d) for d in dbs})
    _refuse_used(place, names, host)
    ctx.stack.push(_mongo_dropper(place, names, host))
    return place


def mongo_checks(place: MongoPlace, stats: dict[str, Any]) -> list[Check]:
    """Documents per collection (views and the oplog have no count to compare), read where they were restored."""

    checks: list[Check] = []
    with connect(place.uri, place.password) as client, mongo_step("drill", host_label(place.uri)):
        for ns, st in sorted(stats.get("namespaces", {}).items()):
            if st.get("type") not in (None, "collection"):
                continue
            db, _, coll = ns.partition(".")
            got = client[place.db(db)][coll].count_documents({})
            checks.append(compare(f"mongo {ns} documents", st.get("documents"), got))
    return checks


def drill_mongo(job: MongoJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
    """Restore into a scratch server, or a `[drill] target` under renamed databases; documents per collection."""
    arts = artifacts(backup, "mongo-archive")
    place = mongo_place(job, backup, arts, ctx)
    ns_from, ns_to = place.renames()
    checks: list[Check] = []
    seconds = 0.0
    for art in arts:
        began = time.monotonic()
        _, stream = open_decompressed(backup.path / art["file"])
        with stream:  # no oplog replay in drills; on a shared target never drop: its databases were checked free
            restore_archive(
                stream, place.uri, drop=place.backup_id is None, ns_from=ns_from, ns_to=ns_to, password=place.password
            )
        seconds += time.monotonic() - began
        checks += mongo_checks(place, art.get("stats", {}))
    return DrillResult(checks, seconds)
