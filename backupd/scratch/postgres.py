"""A throwaway PostgreSQL server (initdb + postgres in the foreground) on a loopback port.

The superuser `postgres` logs in over TCP with `password` (scram-sha-256), as any client backupd starts
would; `execute` talks to it through the instance's own Unix socket (trust, in a 0700 directory).

postgres refuses to run as root. When we are root, the cluster belongs to a dedicated system user,
`backupd-pg` (created once with useradd), in its own 0700 directory under the system temp dir (the
caller's private directories are not reachable by that user); `postgres` is started through
`setpriv`, which execs it, so the PID we stop is the postmaster's own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from backupd.scratch.base import ScratchError, ScratchServer, require_binary

SERVER_USER = "backupd-pg"
SUPERUSER = "postgres"
FIELD_SEP = "\x1f"  # psql -F: the ASCII unit separator, which no name or setting holds
SERVER_TOOLS = ("initdb", "postgres", "pg_isready", "psql")
_ROLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _major_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(x) for x in re.findall(r"\d+", name)) or (0,)


def server_bindir(major: str | None = None) -> Path:
    """The directory holding initdb/postgres: Debian's /usr/lib/postgresql/N/bin (the given major, else the
    newest), else where the initdb on PATH really lives; one line naming the package if there is none."""
    if major is not None:
        dirs = [f"/usr/lib/postgresql/{major}/bin"]
    else:
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: _major_key(d + "/x"), reverse=True)
    if (initdb := shutil.which("initdb")) is not None and major is None:
        dirs.append(os.path.dirname(os.path.realpath(initdb)))
    for d in dirs:
        if all(os.access(os.path.join(d, tool), os.X_OK) for tool in SERVER_TOOLS):
            return Path(d)
    wanted = f"postgresql-{major}" if major else "Debian's postgresql"
    raise ScratchError(f"scratch: PostgreSQL server binaries (initdb, postgres) not found (install {wanted})")


def server_user() -> pwd.struct_passwd | None:
    """The OS user the cluster runs as: None (ourselves) unless we are root, then `backupd-pg`."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = require_binary("useradd", "Debian's passwd", sbin=True)
    done = subprocess.run(
        [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         SERVER_USER],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:  # another process may have created it at the same moment: that is fine too
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ScratchError(f"scratch: cannot create system user {SERVER_USER}: {done.stderr.strip()}") from None


def sql_literal(value: str) -> str:
    """A standard-conforming SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Postgres(ScratchServer):
    """A `postgres` with its own data directory on a free 127.0.0.1 port (fsync off: it is thrown away).

    `major` picks /usr/lib/postgresql/{major}/bin (default: the newest installed). `execute` returns rows as
    tuples of text; SQL NULL reads as "".
    """

    name = "postgres"
    ready_timeout = 60.0

    def __init__(self, base_dir: Path | None = None, extra_args: Sequence[str] = (), major: str | None = None) -> None:
        super().__init__(base_dir, extra_args)
        self.major = major
        self.superuser = SUPERUSER
        self.password = secrets.token_hex(16)
        self._bindir: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._root: Path | None = None  # the cluster's own directory (datadir and socket)

    # -- paths and tools ----------------------------------------------------------------------------
    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = server_bindir(self.major)
        return self._bindir

    @property
    def cluster_dir(self) -> Path:
        if self._root is None:
            raise ScratchError("scratch: postgres has no directory (not started)")
        return self._root

    @property
    def datadir(self) -> Path:
        return self.cluster_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.cluster_dir

    def tool(self, name: str) -> str:
        """A client tool of this server's version (pg_dump, pg_restore, psql, ...)."""
        return str(self.bindir / name)

    def uri(self, database: str = "", user: str | None = None) -> str:
        """`postgresql://user@127.0.0.1:PORT/database`: never a password (it is `password`)."""
        return (
            f"postgresql://{quote(user or self.superuser, safe='')}@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    # -- SQL ----------------------------------------------------------------------------------------
    def execute(self, sql: str, database: str = "postgres", timeout: float = 300.0) -> list[tuple[str, ...]]:
        """Run SQL as the superuser over the Unix socket (SQL on stdin, ON_ERROR_STOP); rows as tuples of text."""
        argv = [
            self.tool("psql"), "-X", "-q", "-A", "-t", "-F", FIELD_SEP, "-0", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser, "-d", database,
        ]  # fmt: skip
        done = subprocess.run(
            argv, input=sql.encode(), capture_output=True, timeout=timeout, check=False, env=self._client_env()
        )
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()
            raise ScratchError(f"scratch: postgres on port {self.port}: {err}")
        return parse_rows(done.stdout.decode("utf-8", "replace"))

    def create_role(self, name: str, password: str | None = None, options: str = "LOGIN") -> None:
        if not _ROLE_RE.match(name):
            raise ValueError(f"scratch: unsupported role name {name!r}")
        pw = f" PASSWORD {sql_literal(password)}" if password is not None else ""
        self.execute(f"CREATE ROLE {sql_ident(name)} {options}{pw};")

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "PGCONNECT_TIMEOUT": "10", "LC_ALL": "C"}

    # -- hooks --------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        bindir = self.bindir
        if os.geteuid() == 0:
            require_binary("setpriv", "Debian's util-linux")
        self._user = server_user()
        if self._root is None:
            if self._user is not None:  # a directory of that user's own, outside our private ones
                self._root = Path(tempfile.mkdtemp(prefix="backupd-pg-"))
                os.chown(self._root, self._user.pw_uid, self._user.pw_gid)
            else:
                self._root = self.dir / "cluster"
                self._root.mkdir(mode=0o700, exist_ok=True)
        if (self.datadir / "PG_VERSION").exists():
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)  # left by a kill()
            return
        pwfile = self.cluster_dir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        argv = [
            str(bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                [*self._as_user(), *argv],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, cwd="/",
                env={**self._client_env(), "TZ": "UTC"},
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ScratchError(f"scratch: initdb failed ({done.returncode}):\n{tail}")

    def _as_user(self) -> list[str]:
        if self._user is None:
            return []
        u = self._user
        return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups", "--"]

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "max_connections": "40",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "timezone": "UTC",
        }
        argv = [*self._as_user(), str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv + list(self.extra_args)

    def _probe(self) -> bool:
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
            stdin=subprocess.DEVNULL, capture_output=True, check=False, env=self._client_env(),
        )  # fmt: skip
        return done.returncode == 0

    def stop(self, *, keep_dir: bool = False) -> None:
        """Fast shutdown (SIGINT: sessions are ended, not waited for), then the base's TERM/KILL by PID."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.stop_timeout)
        super().stop(keep_dir=keep_dir)

    def _cleanup(self) -> None:
        root, self._root = self._root, None
        if root is not None and self._user is not None:
            shutil.rmtree(root, ignore_errors=True)


def parse_rows(out: str) -> list[tuple[str, ...]]:
    """psql -A -t -F US -0 output: each record ends in NUL, fields are separated by the unit separator
    (names and values with newlines come through whole)."""
    records = out.split("\0")
    if records and records[-1].strip("\n") == "":
        records.pop()
    return [tuple(r.split(FIELD_SEP)) for r in records]
