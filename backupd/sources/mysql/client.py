"""Talking to a MySQL/MariaDB server through its client: targets, option files, statements, piping a dump in."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from backupd.engine.procs import feed_command, find_tool, last_line, run_capture
from backupd.errors import BackupdError, StepError, UsageError
from backupd.fsutil import write_private_file
from backupd.settings import SSHCfg, read_secret
from backupd.sources.base import (
    Progress,
    Restored,
    artifacts,
    no_progress,
)
from backupd.sources.mysql.config import MySQLPart
from backupd.store.backups import StoredBackup

DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")


def _quote_option(value: str) -> str:
    """Option-file values are quoted so '#', spaces and quotes in passwords survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_file_text(part: MySQLPart, password: str | None, *, tcp: bool = True) -> str:
    lines = ["[client]", f"user={_quote_option(part.user)}"]
    if password is not None:
        lines.append(f"password={_quote_option(password)}")
    if tcp:
        lines += [f"host={_quote_option(part.host)}", f"port={part.port}", "protocol=TCP"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def private_option_file(part: MySQLPart, password: str | None) -> Iterator[Path]:
    """A 0600 `[client]` file in a private temp dir, removed afterwards: passwords never go in argv."""
    tmp = Path(tempfile.mkdtemp(prefix="backupd-mysql-"))
    try:
        path = tmp / "client.cnf"
        write_private_file(path, option_file_text(part, password).encode())
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class MySQLTarget:
    """`mysql://user@host:port/db`: the password never travels in the URI."""

    user: str
    host: str
    port: int
    database: str | None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def part(self) -> MySQLPart:
        return MySQLPart(host=self.host, port=self.port, user=self.user)


def parse_mysql_uri(uri: str) -> MySQLTarget:
    parts = urlsplit(uri)
    if parts.scheme not in ("mysql", "mariadb"):
        raise UsageError(f"restore: --to {uri!r}: expected mysql://user@host:port/database")
    if parts.password is not None:
        raise UsageError("restore: --to must not contain a password: use --password-file")
    try:
        port = parts.port or 3306
    except ValueError:
        raise UsageError(f"restore: --to {uri!r}: bad port") from None
    db = unquote(parts.path.lstrip("/")) or None
    if db is not None and not DB_NAME_RE.match(db):
        raise UsageError(f"restore: database name {db!r}: use letters, digits, '_', '$', '-'")
    return MySQLTarget(unquote(parts.username or "root"), parts.hostname or "127.0.0.1", port, db)


def find_client(step: str = "restore") -> str:
    return find_tool(["mariadb", "mysql"], "MySQL client", step)


@contextlib.contextmanager
def option_file(target: MySQLTarget, password: str | None) -> Iterator[Path]:
    """A 0600 option file for the target, removed afterwards."""
    with private_option_file(target.part(), password) as path:
        yield path


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_sql(client: str, optfile: Path, sql: str, host: str, database: str | None = None) -> list[list[str]]:
    """A short statement through the client (batch mode); SQL on stdin, rows as lists of text."""
    argv = [client, f"--defaults-extra-file={optfile}", "-N", "-B"]
    if database:
        argv.append(f"--database={database}")
    done = run_capture(argv, input=sql)
    if done.returncode != 0:
        msg = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise StepError("restore", msg, host=host)
    return [line.split("\t") for line in done.stdout.splitlines()]


def database_objects(client: str, optfile: Path, database: str, host: str) -> int | None:
    """How many tables, views, routines and events the database holds; None when it does not exist."""
    q = quote_str(database)
    rows = run_sql(
        client,
        optfile,
        f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME={q};"  # noqa: S608 (quoted)
        f"SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA={q})"
        f" + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={q})"
        f" + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA={q});",
        host,
    )
    if int(rows[0][0]) == 0:
        return None
    return int(rows[1][0])


def prepare_database(client: str, optfile: Path, database: str, host: str, yes: bool) -> None:
    """Create the database if missing; refuse a non-empty one unless the operator said --yes."""
    n = database_objects(client, optfile, database, host)
    if n is None:
        run_sql(client, optfile, f"CREATE DATABASE {quote_ident(database)};", host)
    elif n and not yes:
        raise BackupdError(
            f"restore: target database {database} on {host} is not empty ({n} objects); use --yes to restore over it"
        )


def pipe_sql(
    client: str,
    optfile: Path,
    database: str,
    dump: Path,
    host: str,
    progress: Progress = no_progress,
    expansion: float = 1.0,
) -> None:
    """Stream the decompressed dump into the client's stdin; the client's stderr names a failure.

    `expansion` (raw/stored bytes) scales progress when the compressed file is what we feed."""
    argv = [client, f"--defaults-extra-file={optfile}", f"--database={database}"]
    done = feed_command(argv, dump, progress=progress, expansion=expansion)
    if not done.ok:
        lines = done.tool_tail or [x for tail in done.tails for x in tail]
        why = lines[-1] if lines else f"client exited {done.returncodes[-1]}"
        raise StepError("restore", f"database {database}: {why}", host=host)


def restore_sql_artifacts(
    backup: StoredBackup,
    target: MySQLTarget,
    password: str | None,
    *,
    only: str | None,
    yes: bool,
    progress: Progress = no_progress,
) -> list[Restored]:
    """Restore one artifact into the URI's database, or each under its own name when the URI has none."""
    arts = artifacts(backup, "sql-dump")
    if only is not None:
        arts = [a for a in arts if a.get("database", a["name"]) == only]
        if not arts:
            have = ", ".join(a.get("database", a["name"]) for a in artifacts(backup, "sql-dump"))
            raise UsageError(f"restore: backup {backup.backup_id} has no database {only!r} (it has: {have})")
    if not arts:
        raise UsageError(f"restore: backup {backup.backup_id} holds no SQL dump")
    if target.database and len(arts) > 1:
        have = ", ".join(a.get("database", a["name"]) for a in arts)
        raise UsageError(f"restore: backup holds several databases ({have}): pick one with --database")
    plan = [(a, target.database or a.get("database", a["name"])) for a in arts]
    for _, name in plan:
        if not DB_NAME_RE.match(name):
            raise UsageError(f"restore: database name {name!r}: use letters, digits, '_', '$', '-'")
    client = find_client()
    out = []
    with option_file(target, password) as optfile:
        for _, name in plan:  # check every target before writing into any
            prepare_database(client, optfile, name, target.label, yes)
        for art, name in plan:
            began = time.monotonic()
            expansion = int(art.get("raw_bytes", 0)) / max(1, int(art.get("bytes", 0)))
            pipe_sql(client, optfile, name, backup.path / art["file"], target.label, progress, expansion)
            stats = art.get("stats", {})
            objects = {"tables": len(stats.get("tables", {})), "rows": int(stats.get("rows", 0))}
            out.append(Restored(art["file"], f"{target.label}/{name}", objects, time.monotonic() - began))
    return out



def reach_mysql(part: MySQLPart, ssh: SSHCfg | None) -> list[str]:
    """`check-config --connect`: the SSH host (when there is one) and `SELECT VERSION()` on the server, from
    where the dump connects: here, or on the SSH host for `via_ssh` (the option file on the channel's stdin)."""
    from backupd.engine.remote import connect, reach_ssh, remote_run  # paramiko: not for a local restore

    details = [reach_ssh(ssh)] if ssh is not None else []
    opts = option_file_text(part, read_secret(part.password_file)).encode()
    host = f"{part.host}:{part.port}"
    if part.via_ssh:
        assert ssh is not None  # the job models require [ssh] with via_ssh
        host = f"{ssh.label} ({host} via ssh)"
        with connect(ssh) as conn:
            rc, out, err = remote_run(conn, "command -v mariadb || command -v mysql")
            client = out.strip().splitlines()[0] if rc == 0 and out.strip() else None
            if client is None:
                raise StepError("connect", "no mariadb/mysql client on the SSH host", host=host)
            rc, out, err = remote_run(conn, shlex.join(version_argv(client, "/dev/stdin")), opts)
        if rc != 0:
            raise StepError("connect", last_line(err), host=host)
        return [*details, f"mysql {host} server {out.strip()}"]
    client = find_client("connect")
    with private_option_file(part, read_secret(part.password_file)) as opt:
        proc = run_capture(version_argv(client, str(opt)), timeout=30)
    if proc.returncode != 0:
        raise StepError("connect", last_line(proc.stderr), host=host)
    return [*details, f"mysql {host} server {proc.stdout.strip()}"]


def version_argv(client: str, option_file: str) -> list[str]:
    return [client, f"--defaults-extra-file={option_file}", "-N", "-B", "-e", "SELECT VERSION()"]
