"""Talking to PostgreSQL through its own tools: passfiles, conninfo strings, targets, tool versions, and one
way to run a tool on this machine or on the SSH host.

The password only ever travels in a 0600 passfile named by the child's `PGPASSFILE` (never PGPASSWORD,
never argv): in the run's private temp dir for local tools; over SSH, the passfile's text goes on the
channel's stdin to a `sh -c` that writes it 0600 with mktemp under `umask 077`, runs the tool with
PGPASSFILE set and removes it on exit (`remote_command`).
"""

from __future__ import annotations

import abc
import contextlib
import glob
import os
import re
import shlex
import shutil
import string
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fabric import Connection

from backupd.engine.pipeline import ArtifactWriter
from backupd.engine.procs import CommandResult, run_capture, stream_command
from backupd.engine.remote import connect, remote_run, remote_stream
from backupd.errors import StepError, UsageError
from backupd.fsutil import write_private_file
from backupd.settings import SSHCfg

FIELD_SEP = "\x1f"  # psql -F: the unit separator, which no name or setting holds; records end in NUL (-0)
GLOBALS_ARTIFACT = "globals"
DB_ARTIFACT_PREFIX = "db-"
_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
# connection settings a caller's environment must not slip into our tools (PGPASSWORD above all)
_ENV_DROP = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGHOST", "PGHOSTADDR", "PGPORT",
             "PGUSER", "PGDATABASE", "PGOPTIONS")  # fmt: skip
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
# libpq's "connection to server at "h" (addr), port p failed: " -- the host is in our own message already
_CONN_PREFIX = re.compile(r'^connection to server (?:at|on) "[^"]*"(?: \([^)]*\))?, port \d+ failed: ')
_TOOL_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")

# ------------------------------------------------------------------ names and quoting


def escape_name(name: str) -> str:
    """Percent-encode (UTF-8) every character outside [A-Za-z0-9_-]: any database name becomes a file name."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def unescape_name(escaped: str) -> str:
    return unquote(escaped, errors="strict")


def artifact_name(database: str) -> str:
    """`db-<escaped>`: never `globals`, never two databases on one name."""
    return DB_ARTIFACT_PREFIX + escape_name(database)


def passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def passfile_text(host: str, port: int, user: str, password: str) -> str:
    """One `.pgpass` line, `host:port:*:user:password`, with `\\` and `:` escaped as libpq reads them."""
    if "\n" in password or "\r" in password:
        raise UsageError("postgresql: a password with a line break cannot go in a passfile")
    fields = [passfile_field(host), str(port), "*", passfile_field(user), passfile_field(password)]
    return ":".join(fields) + "\n"


def conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(host: str, port: int, user: str, database: str | None = None) -> str:
    """A keyword/value connection string: any database name is safe in it (a bare `--dbname=NAME` holding
    `=` or starting `postgresql://` would be read as a connection string)."""
    parts = {"host": host, "port": str(port), "user": user}
    if database is not None:
        parts["dbname"] = database
    parts |= {"connect_timeout": "15", "application_name": "backupd"}
    return " ".join(f"{k}={conninfo_value(v)}" for k, v in parts.items())


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard-conforming string literal (`standard_conforming_strings` is on since 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def check_db_name(name: str, what: str = "database name") -> str:
    if not name or "\0" in name or len(name.encode()) > 63:
        raise UsageError(f"restore: {what} {name!r}: PostgreSQL names are 1 to 63 bytes")
    return name


# ------------------------------------------------------------------ versions


def major_of_num(num: int) -> str:
    """`server_version_num` 150018 -> "15"; 90624 -> "9.6" (before 10 the major had two parts)."""
    return str(num // 10000) if num >= 100000 else f"{num // 10000}.{num // 100 % 100}"


def major_of_tool(version_text: str) -> str | None:
    """`pg_dump (PostgreSQL) 15.18 (Debian ...)` -> "15"; `... 9.6.24` -> "9.6"."""
    m = _TOOL_VERSION.search(version_text)
    if m is None:
        return None
    return m.group(1) if int(m.group(1)) >= 10 else f"{m.group(1)}.{m.group(2) or 0}"


def major_key(major: str) -> tuple[int, ...]:
    return tuple(int(x) for x in major.split(".") if x.isdigit())


def bindir_major(bindir: str) -> str:
    return Path(bindir).parent.name


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class PgTarget:
    """`postgresql://user@host:port/db`: the password never travels in the URI."""

    user: str
    host: str
    port: int
    database: str | None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def conninfo(self, database: str | None) -> str:
        return conninfo(self.host, self.port, self.user, database)


def parse_pg_uri(uri: str, what: str = "--to") -> PgTarget:
    parts = urlsplit(uri)
    if parts.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"restore: {what} {uri!r}: expected postgresql://user@host:port/database")
    if parts.password is not None:
        raise UsageError(f"restore: {what} must not contain a password: use --password-file")
    if parts.query or parts.fragment:
        raise UsageError(f"restore: {what} {uri!r}: query parameters are not supported")
    try:
        port = parts.port or 5432
    except ValueError:
        raise UsageError(f"restore: {what} {uri!r}: bad port") from None
    db = unquote(parts.path.lstrip("/")) or None
    if db is not None:
        check_db_name(db)
    return PgTarget(unquote(parts.username or "postgres"), parts.hostname or "127.0.0.1", port, db)


# ------------------------------------------------------------------ running the tools


def client_env(passfile: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["LC_MESSAGES"] = "C"  # error lines we read back stay in English
    if passfile is not None:
        env["PGPASSFILE"] = str(passfile)
    return env


REMOTE_SCRIPT = (
    "umask 077; unset PGPASSWORD PGSERVICE; "
    'f=$(mktemp "${TMPDIR:-/tmp}/backupd-pgpass.XXXXXXXX") || exit 125; '
    "trap 'rm -f \"$f\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; "
    'cat >"$f" || exit 125; PGPASSFILE="$f" "$@"'
)


def remote_command(argv: Sequence[str], with_passfile: bool = True) -> str:
    """The command line for the SSH host: `sh -c SCRIPT backupd-pg ARGV...`, every word shell-quoted.

    SCRIPT reads the passfile from stdin into a 0600 mktemp file, runs ARGV with PGPASSFILE naming it and
    removes it however ARGV ends; ARGV arrives as "$@", so no part of it is ever parsed by the shell."""
    if not with_passfile:
        return shlex.join(["env", "-u", "PGPASSWORD", *argv])
    return shlex.join(["sh", "-c", REMOTE_SCRIPT, "backupd-pg", *argv])


REMOTE_PROBE = (
    f'for d in {DEBIAN_BINDIRS}; do [ -x "$d/pg_dump" ] && echo "D $d"; done; '
    'for t in psql pg_dump pg_dumpall; do p=$(command -v "$t") && echo "P $t $p"; done; true'
)


class Runner(abc.ABC):
    """Where the tools run, this machine or the SSH host; every child gets the passfile."""

    label: str

    @abc.abstractmethod
    def capture(self, argv: Sequence[str], timeout: float = 300) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of a short command."""

    @abc.abstractmethod
    def stream(self, argv: Sequence[str], writer: ArtifactWriter) -> CommandResult:
        """Run a dump tool, its stdout streamed into `writer`."""

    @abc.abstractmethod
    def bindirs(self) -> list[str]:
        """Debian's /usr/lib/postgresql/N/bin directories that hold a pg_dump, newest first."""

    @abc.abstractmethod
    def which(self, tool: str) -> str | None:
        """`tool` on PATH."""

    def tool_major(self, path: str) -> str | None:
        rc, out, _ = self.capture([path, "--version"], timeout=30)
        return major_of_tool(out) if rc == 0 else None


class LocalRunner(Runner):
    def __init__(self, label: str, passfile: Path | None) -> None:
        self.label = label
        self.env = client_env(passfile)

    def capture(self, argv: Sequence[str], timeout: float = 300) -> tuple[int, str, str]:
        done = run_capture(argv, env=self.env, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def stream(self, argv: Sequence[str], writer: ArtifactWriter) -> CommandResult:
        return stream_command(argv, writer, env=self.env)

    def bindirs(self) -> list[str]:
        found = [d for d in glob.glob(DEBIAN_BINDIRS) if os.access(os.path.join(d, "pg_dump"), os.X_OK)]
        return sorted(found, key=lambda d: major_key(bindir_major(d)), reverse=True)

    def which(self, tool: str) -> str | None:
        return shutil.which(tool)


class RemoteRunner(Runner):
    def __init__(self, label: str, conn: Connection, passfile: str | None) -> None:
        self.label = label
        self.conn = conn
        self.passfile = passfile.encode() if passfile is not None else None
        self._probe: tuple[list[str], dict[str, str]] | None = None

    def _command(self, argv: Sequence[str]) -> str:
        return remote_command(argv, with_passfile=self.passfile is not None)

    def capture(self, argv: Sequence[str], timeout: float = 300) -> tuple[int, str, str]:
        return remote_run(self.conn, self._command(argv), self.passfile)

    def stream(self, argv: Sequence[str], writer: ArtifactWriter) -> CommandResult:
        return remote_stream(self.conn, self._command(argv), writer, self.passfile)

    def _probed(self) -> tuple[list[str], dict[str, str]]:
        if self._probe is None:
            rc, out, err = remote_run(self.conn, REMOTE_PROBE)
            if rc != 0:
                raise StepError("find tools", err.strip() or f"probe exited {rc}", host=self.label)
            dirs = [line[2:] for line in out.splitlines() if line.startswith("D ")]
            tools = {
                p[1]: p[2] for line in out.splitlines() if line.startswith("P ") and len(p := line.split(" ", 2)) == 3
            }
            dirs.sort(key=lambda d: major_key(bindir_major(d)), reverse=True)
            self._probe = (dirs, tools)
        return self._probe

    def bindirs(self) -> list[str]:
        return self._probed()[0]

    def which(self, tool: str) -> str | None:
        return self._probed()[1].get(tool)


@contextlib.contextmanager
def local_runner(label: str, host: str, port: int, user: str, password: str | None,
                 tmp_dir: Path | None = None) -> Iterator[LocalRunner]:  # fmt: skip
    """A runner for tools on this machine, with a 0600 passfile (in `tmp_dir`, else a private temp dir)
    that is removed afterwards."""
    if password is None:
        yield LocalRunner(label, None)
        return
    own = tmp_dir is None
    where = Path(tempfile.mkdtemp(prefix="backupd-pg-")) if tmp_dir is None else tmp_dir
    path = where / "pgpass"
    try:
        write_private_file(path, passfile_text(host, port, user, password).encode())
        yield LocalRunner(label, path)
    finally:
        path.unlink(missing_ok=True)
        if own:
            shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def remote_runner(label: str, ssh: SSHCfg, host: str, port: int, user: str,
                  password: str | None) -> Iterator[RemoteRunner]:  # fmt: skip
    text = passfile_text(host, port, user, password) if password is not None else None
    with connect(ssh) as conn:
        yield RemoteRunner(label, conn, text)


# ------------------------------------------------------------------ tools and queries


def error_line(stderr: str | Sequence[str], default: str = "no error output") -> str:
    """The first line that says what failed ("pg_dump: error: ..." / "ERROR: ..."), its tool prefix cut;
    libpq's follow-up lines ("password retrieved from file ...") are not the reason."""
    lines = [x.strip() for x in (stderr.splitlines() if isinstance(stderr, str) else stderr) if x.strip()]
    for line in lines:
        m = re.match(r"^(?:[\w.-]+: )?(?:error|FATAL|ERROR|PANIC): *(.*)$", line)
        if m:
            return _CONN_PREFIX.sub("", re.sub(r"\s+", " ", m.group(1) or line))
    return re.sub(r"\s+", " ", lines[-1]) if lines else default


def find_psql(runner: Runner, step: str) -> str:
    """Any psql can ask the version; the one on PATH, else the newest in Debian's directories."""
    found = runner.which("psql")
    if found:
        return found
    dirs = runner.bindirs()
    if dirs:
        return f"{dirs[0]}/psql"
    raise StepError(step, "psql not found (install postgresql-client)", host=runner.label)


def dump_tool(runner: Runner, tool: str, major: str, step: str = "dump") -> str:
    """`tool` of the server's major version: /usr/lib/postgresql/{major}/bin first, then one on PATH whose
    `--version` says that major."""
    for d in runner.bindirs():
        if bindir_major(d) == major:
            return f"{d}/{tool}"
    on_path = runner.which(tool)
    if on_path and runner.tool_major(on_path) == major:
        return on_path
    raise StepError(step, f"{tool} for PostgreSQL {major} not found (install postgresql-client-{major})",
                    host=runner.label)  # fmt: skip


def restore_tool(runner: Runner, tool: str, target_major: str, archive_major: str | None) -> str:
    """`tool` of the target's major if installed, else the newest one that reads the archive's version."""
    need = major_key(archive_major) if archive_major else (0,)
    dirs = runner.bindirs()
    for d in dirs:
        if bindir_major(d) == target_major and major_key(target_major) >= need:
            return f"{d}/{tool}"
    on_path = runner.which(tool)
    if on_path and major_key(runner.tool_major(on_path) or "0") >= need:
        return on_path
    for d in dirs:
        if major_key(bindir_major(d)) >= need:
            return f"{d}/{tool}"
    raise StepError("restore", f"{tool} for PostgreSQL {archive_major or target_major} or later not found "
                    f"(install postgresql-client-{target_major})", host=runner.label)  # fmt: skip


def psql_argv(psql: str, info: str, *sql: str) -> list[str]:
    argv = [psql, "-X", "-q", "-A", "-t", "-F", FIELD_SEP, "-0", "-w", "-v", "ON_ERROR_STOP=1", f"--dbname={info}"]
    for statement in sql:
        argv += ["-c", statement]
    return argv


def parse_rows(out: str) -> list[list[str]]:
    records = out.split("\0")
    if records and not records[-1].strip("\n"):
        records.pop()
    return [r.split(FIELD_SEP) for r in records]


def query(runner: Runner, psql: str, info: str, sql: str, step: str, what: str = "") -> list[list[str]]:
    """Rows of one statement (text fields); a failure is one line naming host and step."""
    rc, out, err = runner.capture(psql_argv(psql, info, sql))
    if rc != 0:
        raise StepError(step, f"{what}{error_line(err, f'psql exited {rc}')}", host=runner.label)
    return parse_rows(out)


@dataclass(frozen=True)
class ServerVersion:
    num: int
    text: str

    @property
    def major(self) -> str:
        return major_of_num(self.num)


def server_version(runner: Runner, psql: str, info: str, step: str = "connect") -> ServerVersion:
    rows = query(
        runner, psql, info, "SELECT current_setting('server_version_num'), current_setting('server_version')", step
    )
    try:
        return ServerVersion(int(rows[0][0]), rows[0][1])
    except (IndexError, ValueError):
        raise StepError(step, f"unexpected answer to the version query: {rows!r:.80}", host=runner.label) from None


def as_json(value: str) -> Any:
    import json

    return json.loads(value) if value else None
