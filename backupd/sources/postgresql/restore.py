"""Restoring PostgreSQL artifacts into a server: globals first, then each database, then its own settings.

A custom archive is piped into `pg_restore` (stored file -> `zstd -dc` process -> pg_restore's stdin). From a
pipe pg_restore cannot seek, so it runs single-job (no `--jobs`) and restores in archive order -- which is
how pg_dump wrote it. A plain script is piped into `psql -v ON_ERROR_STOP=1`. Either stops at the first
error (`--exit-on-error` / ON_ERROR_STOP), and the error line is the message.

Targets are checked before anything is written: a database holding any relation, function, type or large
object outside the system schemas (extension members aside) is refused unless `--yes`, which means
`pg_restore --clean --if-exists` (a plain script cannot clean, so for plain dumps `--yes` drops and
re-creates the database). Missing roles come from the backup's globals (`globals.py`); owners are kept,
and `--no-owner` is used only when a database's owner role is missing on the target.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.engine.compression import open_decompressed
from backupd.engine.procs import feed_command, run_capture
from backupd.errors import BackupdError, StepError, UsageError
from backupd.sources.base import Progress, Restored, no_progress
from backupd.sources.postgresql.client import (
    GLOBALS_ARTIFACT,
    LocalRunner,
    PgTarget,
    ServerVersion,
    check_db_name,
    error_line,
    find_psql,
    major_of_tool,
    parse_rows,
    psql_argv,
    quote_ident,
    quote_literal,
    restore_tool,
    server_version,
)
from backupd.sources.postgresql.globals import GlobalsPlan, plan_globals
from backupd.store.backups import StoredBackup

DB_FORMATS = ("pg-custom", "pg-plain")
GLOBALS_MAX = 256 << 20  # a globals script is read whole to be filtered; no real cluster's is near this
ADMIN_DB = "postgres"
_USER_NS = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
_NOT_EXT = (
    "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.{cat}'::pg_catalog.regclass"
    " AND e.objid = {alias}.oid AND e.deptype = 'e')"
)
OBJECT_COUNT = f"""
SELECT (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS} AND {_NOT_EXT.format(cat="pg_class", alias="c")})
     + (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_NS} AND {_NOT_EXT.format(cat="pg_proc", alias="p")})
     + (SELECT count(*) FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_NS} AND t.typrelid = 0 AND t.typelem = 0 AND {_NOT_EXT.format(cat="pg_type", alias="t")})
     + (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
"""  # noqa: S608 (constant text)
# settings whose value is a list of names (pg_dump's variable_is_guc_list_quote)
LIST_SETTINGS = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                           "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})  # fmt: skip


# ------------------------------------------------------------------ database settings as SQL


def split_guc_list(value: str) -> list[str]:
    """A list setting's stored text (`"$user", public`) as its names (PostgreSQL's SplitGUCList)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j, name = i + 1, []
            while j < n:
                if value[j] == '"':
                    if value.startswith('""', j):
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(value[j])
                j += 1
            out.append("".join(name))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            out.append(value[i:j])
            i = j
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == ",":
            i += 1
    return out


def setting_sql(prefix: str, item: str) -> str:
    """`ALTER DATABASE x SET name TO value` from a stored `name=value` (as pg_dump's makeAlterConfigCommand)."""
    name, _, value = item.partition("=")
    qname = ".".join(quote_ident(part) for part in name.split("."))
    if name.lower() in LIST_SETTINGS:
        rendered = ", ".join(quote_literal(v) for v in split_guc_list(value)) or "''"
    else:
        rendered = quote_literal(value)
    return f"{prefix} SET {qname} TO {rendered}"


def props_sql(database: str, props: dict[str, Any], roles: set[str]) -> tuple[list[str], list[str]]:
    """What `--create` would have restored for `database`: statements, and notes on what was left out."""
    db = quote_ident(database)
    sql: list[str] = []
    notes: list[str] = []
    owner = props.get("owner")
    if owner and owner in roles:
        sql.append(f"ALTER DATABASE {db} OWNER TO {quote_ident(owner)}")
    elif owner:
        notes.append(f"owner {owner} is not a role here")
    if props.get("comment"):
        sql.append(f"COMMENT ON DATABASE {db} IS {quote_literal(props['comment'])}")
    for item in props.get("settings") or []:
        sql.append(setting_sql(f"ALTER DATABASE {db}", item))
    for role, items in sorted((props.get("role_settings") or {}).items()):
        if role not in roles:
            notes.append(f"settings of role {role} in the database: no such role here")
            continue
        for item in items or []:
            sql.append(setting_sql(f"ALTER ROLE {quote_ident(role)} IN DATABASE {db}", item))
    acl = props.get("acl")
    if acl is not None:  # NULL means the default ACL, which a new database has already
        holder = owner if owner and owner in roles else None
        sql.append(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        if holder:
            sql.append(f"REVOKE ALL ON DATABASE {db} FROM {quote_ident(holder)}")
        for entry in acl:
            grantee = entry.get("grantee", "")
            if grantee and grantee not in roles:
                notes.append(f"grant to {grantee}: no such role here")
                continue
            to = quote_ident(grantee) if grantee else "PUBLIC"
            option = " WITH GRANT OPTION" if entry.get("grantable") else ""
            sql.append(f"GRANT {entry['privilege']} ON DATABASE {db} TO {to}{option}")
    return sql, notes


# ------------------------------------------------------------------ the manifest's view of a backup


def db_artifacts(backup: StoredBackup) -> list[dict[str, Any]]:
    return [a for a in backup.manifest.get("artifacts", []) if a.get("format") in DB_FORMATS]


def source_db(art: dict[str, Any]) -> str:
    return str(art.get("database", art["name"]))


def db_props(backup: StoredBackup, art: dict[str, Any]) -> dict[str, Any]:
    for entry in backup.manifest.get("source", {}).get("databases", []):
        if entry.get("artifact") == art["name"]:
            return dict(entry)
    return {}


def globals_artifact(backup: StoredBackup) -> dict[str, Any] | None:
    for a in backup.manifest.get("artifacts", []):
        if a.get("format") == "pg-globals" and a["name"] == GLOBALS_ARTIFACT:
            return dict(a)
    return None


def read_globals(backup: StoredBackup) -> str | None:
    art = globals_artifact(backup)
    if art is None:
        return None
    _, stream = open_decompressed(backup.path / art["file"])
    with stream:
        data = stream.read(GLOBALS_MAX + 1)
    if len(data) > GLOBALS_MAX:
        raise BackupdError(f"restore: {art['file']}: globals over {GLOBALS_MAX >> 20} MiB")
    return data.decode("utf-8", "replace")


# ------------------------------------------------------------------ piping an artifact in


def pipe_into(argv: list[str], env: dict[str, str], path: Path, what: str, host: str,
              progress: Progress = no_progress, expansion: float = 1.0) -> None:  # fmt: skip
    """Stream the stored artifact, decompressed (by a `zstd -dc` process when installed, so the
    uncompressed bytes never pass through Python), into `argv`'s stdin. The tool's first error line names
    a failure."""
    done = feed_command(argv, path, env, progress, expansion)
    tool_tail = done.tool_tail
    if not done.ok or _errors(tool_tail):
        lines = _errors(tool_tail) or tool_tail or [x for tail in done.tails for x in tail]
        rc = done.returncodes[-1]
        raise StepError("restore", f"{what}: {error_line(lines, f'{Path(argv[0]).name} exited {rc}')}", host=host)


def _errors(lines: list[str]) -> list[str]:
    return [x for x in lines if re.search(r"(^|: )(error|ERROR|FATAL):", x)]


# ------------------------------------------------------------------ one target server


@dataclass
class PgServerSession:
    """A target server reached with our tools (`runner` holds the passfile): queries, databases, restores."""

    target: PgTarget
    runner: LocalRunner
    psql: str = ""
    version: ServerVersion = field(default_factory=lambda: ServerVersion(0, "?"))
    step: str = "restore"

    def __post_init__(self) -> None:
        self.psql = find_psql(self.runner, "connect")
        self.version = server_version(self.runner, self.psql, self.target.conninfo(ADMIN_DB))

    @property
    def host(self) -> str:
        return self.target.label

    def query(self, sql: str, database: str = ADMIN_DB) -> list[list[str]]:
        rc, out, err = self.runner.capture(psql_argv(self.psql, self.target.conninfo(database), sql))
        if rc != 0:
            raise StepError(self.step, error_line(err, f"psql exited {rc}"), host=self.host)
        return parse_rows(out)

    def script(self, sql: str, database: str = ADMIN_DB, what: str = "") -> None:
        """Statements in one transaction, stopping at the first error."""
        argv = [self.psql, "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                f"--dbname={self.target.conninfo(database)}"]  # fmt: skip
        done = run_capture(argv, env=self.runner.env, timeout=600, input=sql)
        if done.returncode != 0:
            why = error_line(done.stderr, f"psql exited {done.returncode}")
            raise StepError(self.step, f"{what}{why}", host=self.host)

    def roles(self) -> set[str]:
        return {r[0] for r in self.query("SELECT rolname FROM pg_catalog.pg_roles")}

    def databases(self) -> set[str]:
        return {r[0] for r in self.query("SELECT datname FROM pg_catalog.pg_database")}

    def objects(self, database: str) -> int | None:
        """User objects in `database`; None when there is no such database."""
        if database not in self.databases():
            return None
        return int(self.query(OBJECT_COUNT, database)[0][0])

    def create_database(self, database: str, props: dict[str, Any]) -> None:
        """From template0 in the dump's encoding, with its locale when the target has it."""
        db = quote_ident(database)
        encoding = props.get("encoding") or "UTF8"
        base = f"CREATE DATABASE {db} TEMPLATE template0 ENCODING {quote_literal(encoding)}"
        attempts = [base]
        if props.get("collate") and props.get("ctype"):
            attempts.insert(
                0, f"{base} LC_COLLATE {quote_literal(props['collate'])} LC_CTYPE {quote_literal(props['ctype'])}"
            )
        last: StepError | None = None
        for sql in attempts:
            try:
                self.query(sql)
                return
            except StepError as exc:
                last = exc
                if "locale" not in str(exc) and "collation" not in str(exc):
                    break
        assert last is not None
        raise last

    def drop_database(self, database: str) -> None:
        force = " WITH (FORCE)" if self.version.num >= 130000 else ""
        self.query(f"DROP DATABASE IF EXISTS {quote_ident(database)}{force}")

    def drop_roles(self, roles: list[str]) -> None:
        for role in roles:
            with contextlib.suppress(BackupdError):
                self.query(f"DROP ROLE IF EXISTS {quote_ident(role)}")

    def apply_globals(self, sql: str | None) -> GlobalsPlan:
        """Create the roles the target lacks, as the backup's globals have them; existing ones are untouched."""
        plan = plan_globals(sql or "", self.roles())
        if plan.statements:
            self.script(plan.script, what="globals: ")
        return plan

    def restore_artifact(self, backup: StoredBackup, art: dict[str, Any], database: str, *, clean: bool,
                         no_owner: bool, progress: Progress = no_progress) -> None:  # fmt: skip
        info = self.target.conninfo(database)
        archive_major = major_of_tool(f"(PostgreSQL) {art.get('facts', {}).get('pg_dump_version', '')}")
        if art["format"] == "pg-custom":
            tool = restore_tool(self.runner, "pg_restore", self.version.major, archive_major)
            argv = [tool, "--no-password", "--exit-on-error", f"--dbname={info}"]
            if clean:
                argv += ["--clean", "--if-exists"]
            if no_owner:
                argv.append("--no-owner")
        else:
            tool = restore_tool(self.runner, "psql", self.version.major, archive_major)
            argv = [tool, "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", f"--dbname={info}"]
        expansion = int(art.get("raw_bytes", 0)) / max(1, int(art.get("bytes", 0)))
        pipe_into(argv, self.runner.env, backup.path / art["file"], f"database {database}", self.host, progress,
                  expansion)  # fmt: skip

    def apply_props(self, database: str, props: dict[str, Any]) -> list[str]:
        sql, notes = props_sql(database, props, self.roles())
        if sql:
            self.script("".join(s + ";\n" for s in sql), what=f"database {database} settings: ")
        return notes


# ------------------------------------------------------------------ backupd restore


def plan_restore(backup: StoredBackup, target: PgTarget, only: str | None) -> list[tuple[dict[str, Any], str]]:
    arts = db_artifacts(backup)
    if only is not None:
        arts = [a for a in arts if source_db(a) == only]
        if not arts:
            have = ", ".join(source_db(a) for a in db_artifacts(backup))
            raise UsageError(f"restore: backup {backup.backup_id} has no database {only!r} (it has: {have})")
    if not arts:
        raise UsageError(f"restore: backup {backup.backup_id} holds no PostgreSQL dump")
    if target.database and len(arts) > 1:
        have = ", ".join(source_db(a) for a in arts)
        raise UsageError(f"restore: backup holds several databases ({have}): pick one with --database")
    return [(a, check_db_name(target.database or source_db(a))) for a in arts]


def restore_databases(session: PgServerSession, backup: StoredBackup, plan: list[tuple[dict[str, Any], str]], *,
                      yes: bool, progress: Progress = no_progress) -> list[Restored]:  # fmt: skip
    """Check every target database, apply the globals, then restore each and re-apply its settings."""
    states = {name: session.objects(name) for _, name in plan}
    for name, n in states.items():
        if n and not yes:
            raise BackupdError(
                f"restore: target database {name} on {session.host} is not empty ({n} objects); "
                "use --yes to restore over it"
            )
    globals_sql = read_globals(backup)
    roles_now = session.roles()
    roles_after = roles_now | set(plan_globals(globals_sql or "", roles_now).created)
    for art, name in plan:
        owner = db_props(backup, art).get("owner")
        if art["format"] == "pg-plain" and owner and owner not in roles_after:
            raise BackupdError(
                f"restore: database {name}: its owner role {owner} is missing on {session.host} and a plain dump "
                "keeps owners: create the role first"
            )
    session.apply_globals(globals_sql)
    roles = session.roles()
    out = []
    for art, name in plan:
        props = db_props(backup, art)
        began = time.monotonic()
        if states[name] is None:
            session.create_database(name, props)
        elif states[name] and art["format"] == "pg-plain":  # --yes: a plain script cannot clean up
            session.drop_database(name)
            session.create_database(name, props)
        no_owner = bool(props.get("owner")) and props["owner"] not in roles
        clean = bool(states[name])
        session.restore_artifact(backup, art, name, clean=clean, no_owner=no_owner, progress=progress)
        session.apply_props(name, props)
        stats = art.get("stats", {})
        objects = {"tables": len(stats.get("tables", {})), "rows": int(stats.get("rows", 0))}
        if stats.get("large_objects"):
            objects["large objects"] = int(stats["large_objects"])
        out.append(Restored(art["file"], f"{session.host}/{name}", objects, time.monotonic() - began))
    return out
