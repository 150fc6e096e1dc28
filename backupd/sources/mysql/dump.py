"""MySQL/MariaDB dumps: one `{database}.sql` artifact per database, made by mariadb-dump (else mysqldump).

Dumps are made without `--databases`, so they carry no CREATE DATABASE/USE and restore under any name.
The password only ever travels in an option file given first on the command line: a 0600 file in our
private temp dir for local dumps, the channel's stdin (`--defaults-extra-file=/dev/stdin`) over SSH.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from backupd.engine.pipeline import ArtifactWriter
from backupd.engine.procs import CommandResult, describe_exit, find_tool, last_line, run_capture, stream_command
from backupd.engine.remote import connect, remote_run, remote_stream
from backupd.errors import StepError
from backupd.formats.sqldump import SqlDumpChecker
from backupd.fsutil import write_private_file
from backupd.settings import SSHCfg, read_secret
from backupd.sources.base import DumpContext
from backupd.sources.mysql.client import option_file_text
from backupd.sources.mysql.config import MySQLPart

SYSTEM_SCHEMAS = {"information_schema", "performance_schema", "mysql", "sys"}
DUMP_FLAGS = ["--single-transaction", "--routines", "--triggers", "--events", "--hex-blob"]
# A PITR job's dumps also write the snapshot's binlog coordinates as comments. With --single-transaction
# MariaDB takes them from the consistent snapshot (binlog_snapshot_file/position), with no global read lock
# and no RELOAD privilege (docs/pitr.md).
PITR_FLAGS = ["--master-data=2", "--gtid"]
# stderr lines that are normal: MariaDB 11 warns when called by its mysql* name
BENIGN_STDERR = re.compile(r"Deprecated program name|^Warning: Using a password", re.IGNORECASE)
ALARMING_STDERR = re.compile(r"error|couldn't|can't|cannot|failed|denied|unknown", re.IGNORECASE)


def dump_argv(tool: str, option_file: str, database: str, pitr: bool = False) -> list[str]:
    """The option file must be the very first argument, or the client ignores it."""
    flags = DUMP_FLAGS + PITR_FLAGS if pitr else DUMP_FLAGS
    return [tool, f"--defaults-extra-file={option_file}", *flags, "--", database]


def list_databases_argv(client: str, option_file: str) -> list[str]:
    return [client, f"--defaults-extra-file={option_file}", "-N", "-B", "-e", "SHOW DATABASES"]


def alarming(stderr: Sequence[str]) -> list[str]:
    return [x for x in stderr if ALARMING_STDERR.search(x) and not BENIGN_STDERR.search(x)]


def host_label(part: MySQLPart, ssh: SSHCfg | None) -> str:
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
    host = host_label(part, ssh)
    opts = option_file_text(part, password).encode()
    pitr = part.pitr.enabled
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
                with _artifact(ctx, db, host) as writer:
                    argv = shlex.join(dump_argv(tool, "/dev/stdin", db, pitr))
                    _judge(remote_stream(conn, argv, writer, opts), db, host)
                _record_position(ctx, db, host, pitr)
                done.append(_facts(ctx, db))
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
            with _artifact(ctx, db, host) as writer:
                _judge(stream_command(dump_argv(tool, str(optfile), db, pitr), writer), db, host)
            _record_position(ctx, db, host, pitr)
            done.append(_facts(ctx, db))
    finally:
        optfile.unlink(missing_ok=True)
    return done


def _artifact(ctx: DumpContext, database: str, host: str) -> AbstractContextManager[ArtifactWriter]:
    return ctx.writing(
        database, "sql-dump", ".sql", SqlDumpChecker(), label=f"database {database}", host=host,
        extra={"database": database},
    )


def _record_position(ctx: DumpContext, database: str, host: str, pitr: bool) -> None:
    """A PITR job's artifact records where its snapshot stands in the binlog: replay starts there."""
    if not pitr:
        return
    facts = ctx.last.check.facts if ctx.last.check else {}
    if "binlog_file" not in facts:
        raise StepError(
            "dump", f"database {database}: the dump holds no binlog position (is log_bin on on the server?)",
            host=host,
        )
    position = {"file": facts["binlog_file"], "pos": facts["binlog_pos"], "gtid": facts.get("gtid", "")}
    ctx.last.extra["binlog_position"] = position


def _facts(ctx: DumpContext, database: str) -> dict[str, Any]:
    check = ctx.last.check
    facts = check.facts if check else {}
    return {"database": database, **{k: v for k, v in facts.items() if k in {"server_version", "tool"}}}
