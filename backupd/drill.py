"""Restore drills: restore a job's newest verified backup into a scratch target and compare it with the
stats recorded at dump time.

A backup is only as good as its last successful restore. Each drill restores into a throwaway server
(`backupd.scratch`) or a configured `[drill] target` it may create and drop, checks what arrived against the
manifest (tables and rows, routines, triggers, views, events; file count, bytes and tree digest; Redis keys;
MongoDB documents per namespace), and records the outcome in the catalog. Everything it starts or creates is
torn down in `finally` blocks, so SIGTERM/SIGINT (raised as `Terminated`) leave no server or temp dir behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from backupd.catalog import Catalog
from backupd.compression import iter_chunks, open_decompressed
from backupd.config import Config, Job, MongoJob, MySQLJob, WordPressJob, read_secret
from backupd.errors import BackupdError, StepError, UsageError
from backupd.restore import (
    MySQLTarget,
    artifacts,
    ensure_intact,
    extract_tar,
    find_client,
    option_file,
    parse_mysql_uri,
    pick_backup,
    pipe_sql,
    quote_ident,
    quote_str,
    run_sql,
)
from backupd.scratch import MariaDB, MongoServer, Redis, ScratchError
from backupd.store import Store, StoredBackup, ensure_private_dir, reading

DRILL_PASSWORD_ENV = "BACKUPD_DRILL_PASSWORD_FILE"  # noqa: S105 (names a file, holds no secret)


@dataclass
class Check:
    check: str
    expected: Any
    actual: Any
    ok: bool


@dataclass
class DrillReport:
    job: str
    backup_id: str | None
    outcome: str = "failed"
    checks: list[Check] = field(default_factory=list)
    restore_seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "restore_seconds": round(self.restore_seconds, 3)}


def compare(name: str, expected: Any, actual: Any) -> Check:
    return Check(name, expected, actual, expected == actual)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------ MySQL / MariaDB


# (check name, information_schema table, name column, schema column, extra condition)
_SCHEMA_OBJECTS = [
    ("views", "VIEWS", "TABLE_NAME", "TABLE_SCHEMA", ""),
    ("procedures", "ROUTINES", "ROUTINE_NAME", "ROUTINE_SCHEMA", " AND ROUTINE_TYPE='PROCEDURE'"),
    ("functions", "ROUTINES", "ROUTINE_NAME", "ROUTINE_SCHEMA", " AND ROUTINE_TYPE='FUNCTION'"),
    ("triggers", "TRIGGERS", "TRIGGER_NAME", "TRIGGER_SCHEMA", ""),
    ("events", "EVENTS", "EVENT_NAME", "EVENT_SCHEMA", ""),
]


def _expected_objects(stats: dict[str, Any], kind: str) -> list[str]:
    routines = stats.get("routines", {})
    value = routines.get(kind, []) if kind in ("procedures", "functions") else stats.get(kind, [])
    return sorted(value)


def sql_checks(client: str, optfile: Path, database: str, host: str, stats: dict[str, Any], label: str) -> list[Check]:
    """Exact row counts per table and the sets of views, routines, triggers and events."""
    q = quote_str(database)

    def names(table: str, column: str, schema_col: str, extra: str) -> list[str]:
        sql = f"SELECT {column} FROM information_schema.{table} WHERE {schema_col}={q}{extra};"  # noqa: S608
        return sorted(r[0] for r in run_sql(client, optfile, sql, host) if r and r[0])

    tables = names("TABLES", "TABLE_NAME", "TABLE_SCHEMA", " AND TABLE_TYPE='BASE TABLE'")
    counts: dict[str, int] = {}
    if tables:  # every name below is quoted by quote_str / quote_ident
        union = " UNION ALL ".join(
            f"SELECT {quote_str(t)}, COUNT(*) FROM {quote_ident(database)}.{quote_ident(t)}"  # noqa: S608
            for t in tables
        )
        counts = {r[0]: int(r[1]) for r in run_sql(client, optfile, union + ";", host)}
    expected_tables: dict[str, int] = stats.get("tables", {})
    out = [compare(f"{label} tables", sorted(expected_tables), tables)]
    for t in sorted(set(expected_tables) | set(counts)):
        out.append(compare(f"{label} rows {t}", expected_tables.get(t), counts.get(t)))
    for kind, table, column, schema_col, extra in _SCHEMA_OBJECTS:
        out.append(compare(f"{label} {kind}", _expected_objects(stats, kind), names(table, column, schema_col, extra)))
    return out


def _drill_password(job: Job) -> str | None:
    env = os.environ.get(DRILL_PASSWORD_ENV)
    if env:
        return read_secret(Path(env))
    if isinstance(job, WordPressJob):
        return read_secret(job.mysql.password_file)
    if isinstance(job, MySQLJob | MongoJob):
        return read_secret(job.password_file)
    return None


@contextlib.contextmanager
def mysql_scratch(job: Job, work: Path, backup_id: str) -> Iterator[tuple[str, Path, str, str]]:
    """(client, option file, host label, database-name prefix): a throwaway mariadbd, or the configured
    `[drill] target` where the drill's databases carry the backup's name and are dropped afterwards."""
    client = find_client()
    if job.drill.target:
        target = parse_mysql_uri(job.drill.target)
        with option_file(MySQLTarget(target.user, target.host, target.port, None), _drill_password(job)) as opt:
            yield client, opt, target.label, f"drill_{backup_id.lower()}_"
        return
    with MariaDB(base_dir=work) as server:
        yield client, server.option_file, f"{server.host}:{server.port}", ""


def drill_sql(
    job: Job, backup: StoredBackup, arts: list[dict[str, Any]], stack: ExitStack, work: Path
) -> tuple[list[Check], float]:
    client, optfile, host, prefix = stack.enter_context(mysql_scratch(job, work, backup.backup_id))
    checks: list[Check] = []
    seconds = 0.0
    for art in arts:
        source_db = art.get("database", art["name"])
        db = f"{prefix}{source_db}"[:64]
        run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)}; CREATE DATABASE {quote_ident(db)};", host)
        if prefix:  # a shared server: never leave the drill's copy behind
            stack.callback(_dropper(client, optfile, db, host))
        began = time.monotonic()
        pipe_sql(client, optfile, db, backup.path / art["file"], host)
        seconds += time.monotonic() - began
        checks += sql_checks(client, optfile, db, host, art.get("stats", {}), f"mysql {source_db}")
    return checks, seconds


def _dropper(client: str, optfile: Path, db: str, host: str) -> Callable[[], None]:
    def drop() -> None:
        with contextlib.suppress(BackupdError, OSError):
            run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)};", host)

    return drop


# ------------------------------------------------------------------ files


def tree_stats(root: Path) -> dict[str, Any]:
    """The tar checker's stats computed from a directory (the colleague's `tree_digest`)."""
    from backupd.formats.tarball import tree_digest  # type: ignore[import-not-found,unused-ignore]

    result: Any = tree_digest(root)
    if isinstance(result, dict):
        return result
    if hasattr(result, "stats"):
        return dict(result.stats)
    return dict(vars(result))


def drill_files(job: Job, backup: StoredBackup, arts: list[dict[str, Any]], work: Path) -> tuple[list[Check], float]:
    base = Path(job.drill.target) if job.drill.target and not job.drill.target.startswith("mysql") else work
    ensure_private_dir(base)
    checks: list[Check] = []
    seconds = 0.0
    for art in arts:
        dest = Path(tempfile.mkdtemp(prefix=f"files-{backup.backup_id}-", dir=base))
        try:
            began = time.monotonic()
            extract_tar(backup.path / art["file"], dest, yes=True)
            seconds += time.monotonic() - began
            got = tree_stats(dest)
            stats = art.get("stats", {})
            for key in ("files", "bytes", "symlinks", "tree_sha256"):
                if key in stats:
                    checks.append(compare(f"files {key}", stats[key], got.get(key)))
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    return checks, seconds


# ------------------------------------------------------------------ Redis


class RdbRedis(Redis):
    """A throwaway redis-server that loads one RDB file at start-up (PING answers only once loaded)."""

    ready_timeout: ClassVar[float] = 1800.0

    def __init__(self, rdb: Path, base_dir: Path | None = None) -> None:
        super().__init__(base_dir)
        self.source_rdb = rdb

    def _prepare(self) -> None:
        super()._prepare()
        if not self.rdb_path.exists():
            _, stream = open_decompressed(self.source_rdb)
            with stream, self.rdb_path.open("wb") as fh:
                for chunk in iter_chunks(stream):
                    fh.write(chunk)


def expected_redis_keys(art: dict[str, Any], manifest: dict[str, Any]) -> int:
    """redis-check-rdb's key count when the source recorded one, else the RDB's RESIZEDB hints."""
    for facts in (art.get("facts", {}), manifest.get("facts", {}), art.get("stats", {})):
        for key in ("keys_read", "check_rdb_keys", "keys"):
            value = facts.get(key) if isinstance(facts, dict) else None
            if isinstance(value, int):
                return value
    return sum(int(v) for v in art.get("stats", {}).get("keys_hint", {}).values())


def drill_redis(
    backup: StoredBackup, arts: list[dict[str, Any]], stack: ExitStack, work: Path
) -> tuple[list[Check], float]:
    checks: list[Check] = []
    seconds = 0.0
    for art in arts:
        began = time.monotonic()
        server = stack.enter_context(RdbRedis(backup.path / art["file"], base_dir=work))
        seconds += time.monotonic() - began
        with server.client() as conn:
            info: dict[str, Any] = conn.info("persistence")
            if "rdb_last_load_keys_loaded" in info:
                loaded = int(info["rdb_last_load_keys_loaded"]) + int(info.get("rdb_last_load_keys_expired", 0))
            else:
                keyspace: dict[str, Any] = conn.info("keyspace")
                loaded = sum(int(v.get("keys", 0)) for v in keyspace.values() if isinstance(v, dict))
        checks.append(compare("redis keys loaded+expired", expected_redis_keys(art, backup.manifest), loaded))
    return checks, seconds


# ------------------------------------------------------------------ MongoDB

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
    from backupd.formats.mongo_archive import ArchiveError, open_archive
    from backupd.mongo_native import SKIP_DBS

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
    from backupd.mongo_native import connect, mongo_step

    with connect(place.uri, place.password) as client, mongo_step("drill", host):
        present = set(client.list_database_names())
        used = [n for n in names if n in present and client[n].list_collection_names()]
    if used:
        raise StepError(
            "drill", f"database {used[0]} already exists and is not empty: refusing to overwrite it", host=host
        )


def _drop_databases(place: MongoPlace, names: list[str]) -> list[str]:
    """Drop each database; the names that could not be dropped."""
    from pymongo.errors import PyMongoError

    from backupd.mongo_native import connect

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


def mongo_place(job: Job, backup: StoredBackup, arts: list[dict[str, Any]], stack: ExitStack, work: Path) -> MongoPlace:
    """A throwaway server, or the configured `[drill] target`: there the drill's databases must be free, and
    their drop is registered on `stack` before anything is restored."""
    if not job.drill.target:
        server = stack.enter_context(MongoServer(base_dir=work))
        return MongoPlace(server.uri)
    from backupd.mongo_native import host_label

    dbs = sorted({d for art in arts for d in archive_databases(backup.path / art["file"])})
    place = MongoPlace(mongo_target_uri(job.drill.target), _drill_password(job), backup.backup_id, tuple(dbs))
    host = host_label(place.uri)
    names = sorted({place.db(d) for d in dbs})
    _refuse_used(place, names, host)
    stack.push(_mongo_dropper(place, names, host))
    return place


def mongo_checks(place: MongoPlace, stats: dict[str, Any]) -> list[Check]:
    """Documents per collection (views and the oplog have no count to compare), read where they were restored."""
    from backupd.mongo_native import connect, host_label, mongo_step

    checks: list[Check] = []
    with connect(place.uri, place.password) as client, mongo_step("drill", host_label(place.uri)):
        for ns, st in sorted(stats.get("namespaces", {}).items()):
            if st.get("type") not in (None, "collection"):
                continue
            db, _, coll = ns.partition(".")
            got = client[place.db(db)][coll].count_documents({})
            checks.append(compare(f"mongo {ns} documents", st.get("documents"), got))
    return checks


def drill_mongo(
    job: Job, backup: StoredBackup, arts: list[dict[str, Any]], stack: ExitStack, work: Path
) -> tuple[list[Check], float]:
    from backupd.mongo_native import restore_archive

    place = mongo_place(job, backup, arts, stack, work)
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
    return checks, seconds


# ------------------------------------------------------------------ one drill


def run_checks(job: Job, backup: StoredBackup, stack: ExitStack, work: Path) -> tuple[list[Check], float]:
    checks: list[Check] = []
    seconds = 0.0
    Part = Callable[[list[dict[str, Any]]], tuple[list[Check], float]]
    parts: list[tuple[str, Part]] = [
        ("sql-dump", lambda a: drill_sql(job, backup, a, stack, work)),
        ("tar", lambda a: drill_files(job, backup, a, work)),
        ("redis-rdb", lambda a: drill_redis(backup, a, stack, work)),
        ("mongo-archive", lambda a: drill_mongo(job, backup, a, stack, work)),
    ]
    for fmt, fn in parts:
        arts = artifacts(backup, fmt)
        if arts:
            c, s = fn(arts)
            checks += c
            seconds += s
    if not checks:
        raise BackupdError(f"drill: backup {backup.backup_id} has nothing to compare")
    return checks, seconds


def drill_job(config: Config, name: str, catalog: Catalog) -> DrillReport:
    """Drill one job; the outcome is recorded in the catalog whatever happens (interrupts included)."""
    job = config.job(name)
    store = Store(config.store_root)
    try:
        backup: StoredBackup | None = pick_backup(store, name, None)
    except BackupdError as exc:
        backup = None
        report = DrillReport(name, None, error=first_line(exc))
    drill_id = catalog.start_drill(name, backup.backup_id if backup else None)
    if backup is None:
        catalog.finish_drill(drill_id, "failed", [], None, report.error)
        return report
    report = DrillReport(name, backup.backup_id)
    work = ensure_private_dir(config.state_dir / "drills") / f"{name}-{backup.backup_id}-{os.getpid()}"
    try:
        with ExitStack() as stack:
            work.mkdir(mode=0o700)
            stack.callback(shutil.rmtree, work, True)
            stack.enter_context(reading(backup))  # a prune meanwhile (timer mode) keeps this backup
            ensure_intact(backup, step="drill verify")
            report.checks, report.restore_seconds = run_checks(job, backup, stack, work)
        report.outcome = "ok" if all(c.ok for c in report.checks) else "failed"
        if not report.ok:
            bad = next(c for c in report.checks if not c.ok)
            report.error = f"{bad.check}: expected {bad.expected}, got {bad.actual}"
    except (BackupdError, ScratchError, OSError) as exc:
        report.error = first_line(exc)
    except BaseException as exc:  # Terminated / KeyboardInterrupt: record, then keep unwinding
        report.error = f"interrupted: {first_line(exc)}"
        catalog.finish_drill(drill_id, "failed", [asdict(c) for c in report.checks], None, report.error)
        raise
    catalog.finish_drill(
        drill_id, report.outcome, [asdict(c) for c in report.checks], round(report.restore_seconds, 3), report.error
    )
    return report


def drill_jobs(config: Config, names: list[str]) -> list[DrillReport]:
    for n in names:
        config.job(n)  # unknown names are a usage error before any drill starts
    catalog = Catalog(config.state_dir)
    try:
        return [drill_job(config, n, catalog) for n in names]
    finally:
        catalog.close()
