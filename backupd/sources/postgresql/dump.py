"""PostgreSQL dumps: the cluster's globals once, then one pg_dump artifact per database.

* `globals` (`globals.sql.zst`, format pg-globals): `pg_dumpall --globals-only` -- roles, memberships,
  role settings, tablespaces; `--no-role-passwords` unless `include_role_passwords`.
* `db-<escaped name>` (`.pgdump.zst` pg-custom, or `.sql.zst` pg-plain): `pg_dump --format=custom
  --compress=0` (our zstd compresses once) or `--format=plain`, of the server's own major version.

Dumps are made without `--create`, so they restore under any name; what `--create` would have carried
(the database's owner, ACL, comment, `ALTER DATABASE ... SET` and `ALTER ROLE ... IN DATABASE ... SET`
settings) is read from the catalogs just before each dump and recorded in the manifest's source facts,
for restores and drills to re-apply. A dump counts only if the tool exited 0, wrote no error line, and
its output passed the format check while it streamed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from backupd.engine.procs import CommandResult, describe_exit
from backupd.errors import StepError
from backupd.formats.base import FormatChecker
from backupd.formats.pgdump import PgCustomChecker, PgPlainChecker
from backupd.formats.pgglobals import PgGlobalsChecker
from backupd.settings import read_secret
from backupd.sources.base import DumpContext
from backupd.sources.postgresql.client import (
    GLOBALS_ARTIFACT,
    Runner,
    ServerVersion,
    artifact_name,
    conninfo,
    dump_tool,
    error_line,
    find_psql,
    local_runner,
    query,
    remote_runner,
    server_version,
)
from backupd.sources.postgresql.config import PostgresJob

FORMATS = {"custom": ("pg-custom", ".pgdump"), "plain": ("pg-plain", ".sql")}

LIST_DATABASES = "SELECT datname FROM pg_catalog.pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"
# What a dump without --create leaves out, for the database we are connected to (PostgreSQL 9.5+).
DATABASE_PROPS = """
SELECT pg_catalog.pg_get_userbyid(d.datdba),
       pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       coalesce(pg_catalog.shobj_description(d.oid, 'pg_database'), ''),
       d.datacl IS NULL,
       coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                    'grantee', CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                    'privilege', a.privilege_type, 'grantable', a.is_grantable))
                 FROM pg_catalog.aclexplode(d.datacl) a), '[]'),
       coalesce((SELECT pg_catalog.array_to_json(s.setconfig) FROM pg_catalog.pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '[]'),
       coalesce((SELECT pg_catalog.json_object_agg(pg_catalog.pg_get_userbyid(s.setrole), s.setconfig)
                 FROM pg_catalog.pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole <> 0), '{}')
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""
SUPERUSER_CHECK = "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"


def dump_argv(pg_dump: str, info: str, fmt: str) -> list[str]:
    if fmt == "custom":
        return [pg_dump, "--format=custom", "--compress=0", "--no-password", f"--dbname={info}"]
    return [pg_dump, "--format=plain", "--no-password", f"--dbname={info}"]


def globals_argv(pg_dumpall: str, info: str, database: str, include_role_passwords: bool) -> list[str]:
    """pg_dumpall ignores a database in --dbname; it connects to `--database` (-l) instead."""
    argv = [pg_dumpall, "--globals-only", "--no-password", f"--dbname={info}", f"--database={database}"]
    if not include_role_passwords:
        argv.append("--no-role-passwords")
    return argv


def host_label(job: PostgresJob) -> str:
    if job.via_ssh and job.ssh is not None:
        return f"{job.ssh.label} ({job.host}:{job.port} via ssh)"
    return f"{job.host}:{job.port}"


def runner_for(
    job: PostgresJob, password: str | None, ctx: DumpContext | None = None
) -> AbstractContextManager[Runner]:
    label = host_label(job)
    if job.via_ssh:
        assert job.ssh is not None
        return remote_runner(label, job.ssh, job.host, job.port, job.user, password)
    return local_runner(label, job.host, job.port, job.user, password, ctx.tmp_dir if ctx else None)


def alarming(stderr: Sequence[str]) -> list[str]:
    """Error lines; pg_dump's warnings (circular foreign keys, ...) and details are not failures."""
    return [x for x in stderr if ": error:" in x or x.startswith(("ERROR:", "FATAL:", "PANIC:")) or "FATAL:" in x]


def judge(ctx: DumpContext, result: CommandResult, what: str, tool: str, host: str) -> None:
    """Exit status 0 and no error line, or the step fails; warning lines go into the manifest."""
    bad = alarming(result.stderr)
    if result.returncode != 0:
        why = error_line(bad or result.stderr)
        raise StepError("dump", f"{what}: {tool} {describe_exit(result.returncode)}: {why}", host=host)
    if bad:
        raise StepError("dump", f"{what}: {tool} reported: {error_line(bad)}", host=host)
    for line in result.stderr:
        if ": warning:" in line:
            ctx.warn(f"{what}: {line.strip()}", host=host)


def database_props(runner: Runner, psql: str, job: PostgresJob, database: str) -> dict[str, Any]:
    """Owner, encoding, locale, comment, ACL and settings of `database`, as restores re-apply them."""
    info = conninfo(job.host, job.port, job.user, database)
    rows = query(runner, psql, info, DATABASE_PROPS, "dump", f"database {database}: ")
    if not rows or len(rows[0]) != 9:
        raise StepError("dump", f"database {database}: cannot read its owner and settings", host=runner.label)
    owner, encoding, collate, ctype, comment, acl_default, acl, settings, role_settings = rows[0]
    return {
        "owner": owner,
        "encoding": encoding,
        "collate": collate,
        "ctype": ctype,
        "comment": comment or None,
        "acl": None if acl_default == "t" else json.loads(acl),
        "settings": json.loads(settings),
        "role_settings": json.loads(role_settings),
    }


def list_databases(runner: Runner, psql: str, job: PostgresJob) -> list[str]:
    info = conninfo(job.host, job.port, job.user, maintenance_db(job))
    return [r[0] for r in query(runner, psql, info, LIST_DATABASES, "list databases") if r and r[0]]


def _writing(ctx: DumpContext, name: str, fmt: str, ext: str, checker: FormatChecker, label: str,
             host: str, database: str | None) -> AbstractContextManager[Any]:  # fmt: skip
    extra = {"database": database} if database is not None else {}
    return ctx.writing(name, fmt, ext, checker, label=label, host=host, extra=extra)


def maintenance_db(job: PostgresJob) -> str:
    """The database short queries connect to: the first configured one (the user surely may), else postgres."""
    return job.databases[0] if job.databases else "postgres"


def dump_postgres(job: PostgresJob, ctx: DumpContext) -> dict[str, Any]:
    """Globals, then every configured database (or all that allow connections, templates aside).

    Every database's owner and settings are read before anything is written, so a database that does not
    exist (or that the user may not connect to) fails the run before the first artifact."""
    password = read_secret(job.password_file)
    label = host_label(job)
    fmt, ext = FORMATS[job.format]
    maint = maintenance_db(job)
    with runner_for(job, password, ctx) as runner:
        psql = find_psql(runner, "connect")
        version = server_version(runner, psql, conninfo(job.host, job.port, job.user, maint))
        pg_dump = dump_tool(runner, "pg_dump", version.major)
        pg_dumpall = dump_tool(runner, "pg_dumpall", version.major)
        databases = list(job.databases) or list_databases(runner, psql, job)
        if not databases:
            raise StepError("list databases", "no database to dump", host=label)
        props = {db: database_props(runner, psql, job, db) for db in databases}
        ctx.events.event("step", step="dump", artifact=GLOBALS_ARTIFACT, host=label)
        server = conninfo(job.host, job.port, job.user, None)
        argv = globals_argv(pg_dumpall, server, maint, job.include_role_passwords)
        with _writing(ctx, GLOBALS_ARTIFACT, "pg-globals", ".sql", PgGlobalsChecker(), "globals", label, None) as w:
            judge(ctx, runner.stream(argv, w), "globals", "pg_dumpall", label)
        done = []
        for db in databases:
            ctx.events.event("step", step="dump", database=db, host=label)
            checker = PgCustomChecker() if job.format == "custom" else PgPlainChecker()
            info = conninfo(job.host, job.port, job.user, db)
            with _writing(ctx, artifact_name(db), fmt, ext, checker, f"database {db}", label, db) as w:
                result = runner.stream(dump_argv(pg_dump, info, job.format), w)
                judge(ctx, result, f"database {db}", "pg_dump", label)
            done.append({"database": db, "artifact": ctx.last.name, **props[db]})
            for warning in ctx.last.check.warnings if ctx.last.check else []:
                ctx.warn(f"database {db}: {warning}", host=label)
    return _facts(label, version, job, done)


def _facts(label: str, version: ServerVersion, job: PostgresJob, done: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "host": label,
        "server_version": version.text,
        "server_major": version.major,
        "format": job.format,
        "role_passwords": job.include_role_passwords,
        "globals": GLOBALS_ARTIFACT,
        "databases": done,
    }


def reach_postgres(job: PostgresJob) -> list[str]:
    """`check-config --connect`: the SSH host when there is one, then `SELECT version()` (through the SSH
    host for via_ssh); a superuser when the globals are to carry role passwords."""
    from backupd.engine.remote import reach_ssh

    details = [reach_ssh(job.ssh)] if job.ssh is not None else []
    password = read_secret(job.password_file)
    with runner_for(job, password) as runner:
        psql = find_psql(runner, "connect")
        info = conninfo(job.host, job.port, job.user, maintenance_db(job))
        rows = query(runner, psql, info, "SELECT version()", "connect")
        if job.include_role_passwords:
            superuser = query(runner, psql, info, SUPERUSER_CHECK, "connect")
            if not superuser or superuser[0][0] != "t":
                raise StepError(
                    "connect",
                    f"include_role_passwords = true needs a superuser: {job.user} is not one",
                    host=runner.label,
                )
    version = rows[0][0].split(" on ")[0] if rows and rows[0] else "?"
    return [*details, f"postgresql {host_label(job)} server {version}"]
