"""MySQL drills: each database into a scratch server (or a `[drill] target`), compared with the dump's stats."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backupd.errors import BackupdError
from backupd.scratch.mariadb import MariaDB
from backupd.sources.base import (
    Check,
    DrillContext,
    DrillResult,
    artifacts,
    compare,
)
from backupd.sources.mysql.client import (
    MySQLTarget,
    find_client,
    option_file,
    parse_mysql_uri,
    pipe_sql,
    quote_ident,
    quote_str,
    run_sql,
)
from backupd.store.backups import StoredBackup

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


@contextlib.contextmanager
def mysql_scratch(
    drill_target: str | None, password: str | None, work: Path, backup_id: str
) -> Iterator[tuple[str, Path, str, str]]:
    """(client, option file, host label, database-name prefix): a throwaway mariadbd, or the configured
    `[drill] target` where the drill's databases carry the backup's name and are dropped afterwards."""
    client = find_client()
    if drill_target:
        target = parse_mysql_uri(drill_target)
        with option_file(MySQLTarget(target.user, target.host, target.port, None), password) as opt:
            yield client, opt, target.label, f"drill_{backup_id.lower()}_"
        return
    with MariaDB(base_dir=work) as server:
        yield client, server.option_file, f"{server.host}:{server.port}", ""


def drill_sql(drill_target: str | None, password: str | None, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
    """Each database into the scratch server under its own name (or a drill_ name on a shared target)."""
    stack = ctx.stack
    scratch = mysql_scratch(drill_target, password, ctx.work, backup.backup_id)
    client, optfile, host, prefix = stack.enter_context(scratch)
    checks: list[Check] = []
    seconds = 0.0
    for art in artifacts(backup, "sql-dump"):
        source_db = art.get("database", art["name"])
        db = f"{prefix}{source_db}"[:64]
        run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)}; CREATE DATABASE {quote_ident(db)};", host)
        if prefix:  # a shared server: never leave the drill's copy behind
            stack.callback(_dropper(client, optfile, db, host))
        began = time.monotonic()
        pipe_sql(client, optfile, db, backup.path / art["file"], host)
        seconds += time.monotonic() - began
        checks += sql_checks(client, optfile, db, host, art.get("stats", {}), f"mysql {source_db}")
    return DrillResult(checks, seconds)


def _dropper(client: str, optfile: Path, db: str, host: str) -> Callable[[], None]:
    def drop() -> None:
        with contextlib.suppress(BackupdError, OSError):
            run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)};", host)

    return drop
