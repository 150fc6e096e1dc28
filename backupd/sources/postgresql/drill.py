"""PostgreSQL drills: every database into a scratch `postgres` (or a `[drill] target`), compared with the
stats the format checker recorded while the dump streamed.

On a scratch server the globals are applied first and each database keeps its own name and owners. On a
shared `[drill] target` the databases are restored as `drill_{backupid}_{db}` and dropped afterwards, and
any role the drill had to create is dropped after them; both go through the drill's ExitStack, so an
interrupted drill cleans up too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backupd.errors import BackupdError
from backupd.scratch.base import ScratchError
from backupd.scratch.postgres import Postgres, server_bindir
from backupd.sources.base import Check, DrillContext, DrillResult, compare, drill_password
from backupd.sources.postgresql.client import PgTarget, local_runner, parse_pg_uri, quote_literal
from backupd.sources.postgresql.config import PostgresJob
from backupd.sources.postgresql.restore import (
    PgServerSession,
    db_artifacts,
    db_props,
    read_globals,
    source_db,
)
from backupd.store.backups import StoredBackup

DB_NAME_MAX = 63  # bytes
_NS = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
_NOT_EXT = (
    "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.{cat}'::pg_catalog.regclass"
    " AND e.objid = {alias}.oid AND e.deptype = 'e')"
)
# kind, "schema.tag" as pg_dump tags its TOC entries (functions with their argument types, triggers as
# "table trigger"), for every object a dump's stats list by name
CATALOG = f"""
SELECT CASE c.relkind WHEN 'r' THEN 'tables' WHEN 'v' THEN 'views' WHEN 'm' THEN 'materialized_views'
                      WHEN 'S' THEN 'sequences' END, n.nspname || '.' || c.relname,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'v', 'm', 'S') AND {_NS} AND {_NOT_EXT.format(cat="pg_class", alias="c")}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedures' ELSE 'functions' END,
       n.nspname || '.' || p.proname || '(' || coalesce((SELECT string_agg(pg_catalog.format_type(a.t, NULL), ', '
           ORDER BY a.i) FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)), '') || ')', ''
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p', 'w') AND {_NS} AND {_NOT_EXT.format(cat="pg_proc", alias="p")}
UNION ALL
SELECT 'triggers', n.nspname || '.' || c.relname || ' ' || t.tgname, ''
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND {_NS}
UNION ALL
SELECT 'large_objects', count(*)::text, '' FROM pg_catalog.pg_largeobject_metadata
"""  # noqa: S608 (constant text)
SETTINGS = """
SELECT pg_catalog.pg_get_userbyid(d.datdba),
       coalesce((SELECT pg_catalog.array_to_json(s.setconfig) FROM pg_catalog.pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '[]'),
       coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
                    CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                    a.privilege_type, a.is_grantable))
                 FROM pg_catalog.aclexplode(d.datacl) a), '[]')
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""
LISTED = ("views", "materialized_views", "functions", "procedures", "sequences", "triggers")


def drill_db_name(backup_id: str, db: str) -> str:
    """`drill_{backupid}_{db}`; over 63 bytes it is cut and ends in a hash of `db`, so two long names differ."""
    name = f"drill_{backup_id.lower()}_{db}"
    if len(name.encode()) <= DB_NAME_MAX:
        return name
    head = name.encode()[: DB_NAME_MAX - 9].decode("utf-8", "ignore")
    return f"{head}_{hashlib.sha256(db.encode()).hexdigest()[:8]}"


def database_checks(session: PgServerSession, database: str, stats: dict[str, Any], props: dict[str, Any],
                    label: str) -> list[Check]:  # fmt: skip
    """Tables and exact rows per table, views, functions, sequences and their values, triggers, large
    objects, and the database's own owner and settings, against the dump's stats."""
    found: dict[str, list[str]] = {}
    quoted: dict[str, str] = {}  # "schema.name" -> its identifier, quoted by the server
    large_objects = 0
    for kind, name, ident in (tuple(r) for r in session.query(CATALOG, database)):
        if kind == "large_objects":
            large_objects = int(name)
        else:
            found.setdefault(kind, []).append(name)
            if ident:
                quoted[name] = ident
    tables = sorted(found.get("tables", []))
    expected_tables: dict[str, int] = stats.get("tables", {})
    # only tables whose data was dumped (and counted) are compared row for row
    counted = [t for t in tables if t in expected_tables]
    counts = _counts(session, database, {t: quoted[t] for t in counted}, "count(*)")
    out = [compare(f"{label} tables", sorted(expected_tables), [t for t in tables if t not in _unlisted(stats)])]
    for t in sorted(set(expected_tables) | set(counts)):
        out.append(compare(f"{label} rows {t}", expected_tables.get(t), counts.get(t)))
    for kind in LISTED:
        out.append(compare(f"{label} {kind}", sorted(stats.get(kind, [])), sorted(found.get(kind, []))))
    expected_values: dict[str, int] = stats.get("sequence_values", {})
    values = _counts(session, database, {s: quoted[s] for s in expected_values if s in quoted}, "last_value")
    for s in sorted(expected_values):
        out.append(compare(f"{label} sequence {s}", expected_values[s], values.get(s)))
    out.append(compare(f"{label} large objects", int(stats.get("large_objects", 0)), large_objects))
    owner, settings, acl = session.query(SETTINGS, database)[0]
    out.append(compare(f"{label} database settings", sorted(props.get("settings") or []), sorted(json.loads(settings))))
    if props.get("owner") is not None:
        out.append(compare(f"{label} database owner", props["owner"], owner))
    if props.get("acl") is not None:
        expected = sorted([a["grantee"], a["privilege"], a["grantable"]] for a in props["acl"])
        out.append(compare(f"{label} database acl", expected, sorted(json.loads(acl))))
    return out


def _unlisted(stats: dict[str, Any]) -> set[str]:
    """Tables in the dump without a counted data block (--inserts, lz4/zstd): listed elsewhere in the stats."""
    return set(stats.get("uncounted_tables", []))


def _counts(session: PgServerSession, database: str, relations: dict[str, str], expr: str) -> dict[str, int]:
    """`expr` (count(*), last_value) of each relation in one query, by the identifiers the server quoted."""
    if not relations:
        return {}
    parts = [
        f"SELECT {quote_literal(name)}, ({expr})::bigint FROM {ident}"  # noqa: S608 (literal and server-quoted)
        for name, ident in sorted(relations.items())
    ]
    rows = session.query(" UNION ALL ".join(parts), database)
    return {r[0]: int(r[1]) for r in rows}


def _scratch_major(backup: StoredBackup) -> str | None:
    major = backup.manifest.get("source", {}).get("server_major")
    if isinstance(major, str):
        with contextlib.suppress(ScratchError):
            server_bindir(major)
            return major
    return None


def drill_postgres(job: PostgresJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
    stack = ctx.stack
    shared = job.drill.target is not None
    if job.drill.target:
        target = parse_pg_uri(job.drill.target, "[drill] target")
        target = PgTarget(target.user, target.host, target.port, None)
        password = drill_password(job.password_file)
    else:
        server = stack.enter_context(Postgres(base_dir=ctx.work, major=_scratch_major(backup)))
        target = PgTarget(server.superuser, server.host, server.port, None)
        password = server.password
    runner = stack.enter_context(local_runner(target.label, target.host, target.port, target.user, password,
                                              _private_tmp(ctx)))  # fmt: skip
    session = PgServerSession(target, runner, step="drill")
    plan = session.apply_globals(read_globals(backup))
    ctx.notes += [f"postgresql globals: left out {stmt}" for stmt in plan.skipped]
    if shared and plan.created:  # registered first, so it runs after the databases are dropped
        stack.callback(session.drop_roles, list(reversed(plan.created)))
    checks: list[Check] = []
    seconds = 0.0
    roles = session.roles()
    for art in db_artifacts(backup):
        db = source_db(art)
        name = drill_db_name(backup.backup_id, db) if shared else db
        props = db_props(backup, art)
        if shared:
            session.drop_database(name)
            stack.callback(_dropper(session, name))
        if session.objects(name) is None:
            session.create_database(name, props)
        began = time.monotonic()
        owner = props.get("owner")
        session.restore_artifact(backup, art, name, clean=False, no_owner=bool(owner and owner not in roles))
        ctx.notes += [f"postgresql {db}: {note}" for note in session.apply_props(name, props)]
        seconds += time.monotonic() - began
        checks += database_checks(session, name, art.get("stats", {}), props, f"postgresql {db}")
    return DrillResult(checks, seconds)


def _private_tmp(ctx: DrillContext) -> Path:
    path = ctx.work / "client"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _dropper(session: PgServerSession, database: str) -> Callable[[], None]:
    def drop() -> None:
        with contextlib.suppress(BackupdError, OSError):
            session.drop_database(database)

    return drop
