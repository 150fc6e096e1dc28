"""MySQL/MariaDB: one `{database}.sql` artifact per database, dumped with mariadb-dump (else mysqldump).

Dumps are made without `--databases`, so they carry no CREATE DATABASE/USE and restore under any name.
The password only ever travels in an option file given first on the command line: a 0600 file in our
private temp dir for local dumps, the channel's stdin (`--defaults-extra-file=/dev/stdin`) over SSH.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backupd.config import MySQLJob, MySQLPart, SSHCfg, read_secret
from backupd.errors import StepError
from backupd.formats.sqldump import SqlDumpChecker
from backupd.procs import CommandResult, describe_exit, last_line, run_capture, stream_command
from backupd.remote import connect, remote_run, remote_stream
from backupd.sources import DumpContext
from backupd.store import write_private_file

SYSTEM_SCHEMAS = {"information_schema", "performance_schema", "mysql", "sys"}
DUMP_FLAGS = ["--single-transaction", "--routines", "--triggers", "--events", "--hex-blob"]
# stderr lines that are normal: MariaDB 11 warns when called by its mysql* name
BENIGN_STDERR = re.compile(r"Deprecated program name|^Warning: Using a password", re.IGNORECASE)
ALARMING_STDERR = re.compile(r"error|couldn't|can't|cannot|failed|denied|unknown", re.IGNORECASE)


def find_tool(names: Sequence[str], what: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise StepError("dump", f"{what}: none of {', '.join(names)} found on PATH")


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


def dump_argv(tool: str, option_file: str, database: str) -> list[str]:
    """The option file must be the very first argument, or the client ignores it."""
    return [tool, f"--defaults-extra-file={option_file}", *DUMP_FLAGS, "--", database]


def list_databases_argv(client: str, option_file: str) -> list[str]:
    return [client, f"--defaults-extra-file={option_file}", "-N", "-B", "-e", "SHOW DATABASES"]


def alarming(stderr: Sequence[str]) -> list[str]:
    return [x for x in stderr if ALARMING_STDERR.search(x) and not BENIGN_STDERR.search(x)]


def _host_label(part: MySQLPart, ssh: SSHCfg | None) -> str:
    if part.via_ssh and ssh is not None:
        return f"{ssh.label} ({part.host}:{part.port} via ssh)"
    return f"{part.host}:{part.port}"


def _judge(result: CommandResult, database: str, host: str) -> None:
    if result.returncode != 0:
        bad = alarming(result.stderr) or result.stderr
        raise StepError(
            "dump", f"database {database}: dump {describe_exit(result.returncode)}: {last_line(bad)}", host=host
        )
    bad = alarming(result.stderr)
    if bad:
        raise StepError("dump", f"database {database}: dump reported: {bad[-1]}", host=host)


def _databases_from(listing: str) -> list[str]:
    return [d for d in (x.strip() for x in listing.splitlines()) if d and d not in SYSTEM_SCHEMAS]


def dump_part(ctx: DumpContext, part: MySQLPart, ssh: SSHCfg | None) -> list[dict[str, Any]]:
    """Dump every configured database (or all but the system schemas) of one server."""
    password = read_secret(part.password_file)
    host = _host_label(part, ssh)
    opts = option_file_text(part, password).encode()
    done: list[dict[str, Any]] = []
    if part.via_ssh:
        assert ssh is not None
        with connect(ssh) as conn:
            rc, out, err = remote_run(
                conn,
                "command -v mariadb-dump || command -v mysqldump; command -v mariadb || command -v mysql",
            )
            found = out.split()
            tool = next((p for p in found if p.endswith("dump")), None)
            client = next((p for p in found if not p.endswith("dump")), None)
            if tool is None:
                raise StepError("dump", "neither mariadb-dump nor mysqldump found on the SSH host", host=host)
            databases = list(part.databases)
            if not databases:
                if client is None:
                    raise StepError("list databases", "no mariadb/mysql client on the SSH host", host=host)
                rc, out, err = remote_run(conn, shlex.join(list_databases_argv(client, "/dev/stdin")), opts)
                if rc != 0:
                    raise StepError("list databases", last_line(err), host=host)
                databases = _databases_from(out)
            for db in databases:
                ctx.events.event("step", step="dump", database=db, host=host)
                writer = ctx.artifact(db, "sql-dump", ".sql", SqlDumpChecker())
                try:
                    result = remote_stream(conn, shlex.join(dump_argv(tool, "/dev/stdin", db)), writer, opts)
                    _judge(result, db, host)
                except BaseException:
                    writer.abort()
                    raise
                done.append(_finish(ctx, writer.close(), db, host))
        return done

    tool = find_tool(["mariadb-dump", "mysqldump"], "MySQL dump tool")
    optfile = ctx.tmp_dir / "client.cnf"
    write_private_file(optfile, opts)
    try:
        databases = list(part.databases)
        if not databases:
            client = find_tool(["mariadb", "mysql"], "MySQL client")
            proc = run_capture(list_databases_argv(client, str(optfile)))
            if proc.returncode != 0:
                raise StepError("list databases", last_line(proc.stderr), host=host)
            databases = _databases_from(proc.stdout)
        for db in databases:
            ctx.events.event("step", step="dump", database=db, host=host)
            writer = ctx.artifact(db, "sql-dump", ".sql", SqlDumpChecker())
            try:
                result = stream_command(dump_argv(tool, str(optfile), db), writer)
                _judge(result, db, host)
            except BaseException:
                writer.abort()
                raise
            done.append(_finish(ctx, writer.close(), db, host))
    finally:
        optfile.unlink(missing_ok=True)
    return done


def _finish(ctx: DumpContext, result: Any, database: str, host: str) -> dict[str, Any]:
    result.extra["database"] = database
    ctx.add(result)
    if not result.ok:
        raise StepError("verify", f"database {database}: {result.check.errors[0]}", host=host)
    facts = result.check.facts if result.check else {}
    return {"database": database, **{k: v for k, v in facts.items() if k in {"server_version", "tool"}}}


def check(job: MySQLJob, ctx: DumpContext) -> None:
    """Connectivity is proven by the dump itself; nothing cheaper is more truthful."""


def dump(job: MySQLJob, ctx: DumpContext) -> dict[str, Any]:
    dbs = dump_part(ctx, job, job.ssh)
    return {"host": _host_label(job, job.ssh), "databases": dbs}
