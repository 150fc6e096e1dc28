"""A throwaway MariaDB server (mariadb-install-db + mariadbd --no-defaults) on a loopback port."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    pass

from backupd.scratch.base import (
    _UNIX_SOCKET_MAX,
    ScratchError,
    ScratchServer,
    _write_private,
    current_user,
    require_binary,
)

_TEMPLATE_LOCK = threading.Lock()
_template_dir: Path | None = None
_INNODB_LOG_SIZE = "16M"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_BATCH_ESCAPES = {"0": "\0", "t": "\t", "n": "\n", "\\": "\\"}


def _drop_mariadb_template() -> None:
    global _template_dir
    with _TEMPLATE_LOCK:
        if _template_dir is not None:
            shutil.rmtree(_template_dir.parent, ignore_errors=True)
            _template_dir = None


def _mariadb_template() -> Path:
    """One initialised datadir per process: copying 30 MB beats running mariadb-install-db every time."""
    global _template_dir
    with _TEMPLATE_LOCK:
        if _template_dir is not None and _template_dir.is_dir():
            return _template_dir
        install = require_binary("mariadb-install-db", "Debian's mariadb-server")
        root = Path(tempfile.mkdtemp(prefix="backupd-mariadb-template-"))
        atexit.register(_drop_mariadb_template)  # after stop_all (atexit runs in reverse): servers first
        # Only the socket-authenticated root@localhost survives: no anonymous or hostname accounts.
        cleanup = root / "cleanup.sql"
        me = sql_quote(current_user())
        cleanup.write_text(
            "DELETE FROM mysql.global_priv WHERE NOT ((User='root' AND Host='localhost')"  # noqa: S608 (quoted)
            f" OR User='mariadb.sys' OR (User={me} AND Host='localhost'));\n"
            "DELETE FROM mysql.proxies_priv WHERE Host<>'localhost';\n"
        )
        argv = [
            install,
            "--no-defaults",
            f"--datadir={root / 'data'}",
            "--skip-test-db",
            "--skip-name-resolve",
            f"--innodb-log-file-size={_INNODB_LOG_SIZE}",
            # Durability is pointless for a throwaway template and fsyncs dominate on a busy disk.
            "--innodb-doublewrite=0",
            "--innodb-flush-log-at-trx-commit=0",
            f"--extra-file={cleanup}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ScratchError(f"scratch: mariadb-install-db failed ({done.returncode}):\n{tail}")
        _template_dir = root / "data"
        return _template_dir


def sql_quote(value: str) -> str:
    """A single-quoted SQL string literal (MariaDB escaping), for passwords and names we generate SQL for."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unescape_batch(field: str) -> str:
    return re.sub(r"\\(.)", lambda m: _BATCH_ESCAPES.get(m.group(1), m.group(1)), field)


class MariaDB(ScratchServer):
    """A `mariadbd` with its own datadir; root logs in over TCP with `root_password`.

    Accounts: root@localhost (unix socket as the OS user, or the password) and root@127.0.0.1 (password);
    users from `create_user` are `name@'%'`. `execute` returns rows as text; SQL NULL reads as "NULL".
    """

    name = "mariadb"

    def __init__(self, base_dir: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        super().__init__(base_dir, extra_args)
        self.root_password = secrets.token_hex(16)
        self._passwords: dict[str, str] = {"root": self.root_password}
        self._socket_dir: Path | None = None
        self._mariadbd = ""
        self._client = ""

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        if self._socket_dir is not None:
            return self._socket_dir / "mysqld.sock"
        return self.dir / "mysqld.sock"

    @property
    def option_file(self) -> Path:
        """0600 `[client]` file for root over TCP; pass as --defaults-file / --defaults-extra-file."""
        return self.option_file_for("root")

    def option_file_for(self, user: str) -> Path:
        """Write (each call, as the port may change on restart) a 0600 `[client]` file for `user`."""
        password = self.password_for(user)
        text = f"[client]\nhost={self.host}\nport={self.port}\nuser={user}\npassword={_option_value(password)}\n"
        return _write_private(self.dir / f"client-{user}.cnf", text)

    def password_for(self, user: str) -> str:
        try:
            return self._passwords[user]
        except KeyError:
            raise ScratchError(f"scratch: mariadb has no user {user!r} created here") from None

    def dsn_for(self, user: str, database: str | None = None) -> str:
        """`mysql://user:password@127.0.0.1:PORT/[database]`, password URL-quoted."""
        password = quote(self.password_for(user), safe="")
        return f"mysql://{quote(user, safe='')}:{password}@{self.host}:{self.port}/{database or ''}"

    def create_user(self, name: str, password: str, grants: str = "ALL", on: str = "*.*") -> None:
        """Create (or replace) `name@'%'` and grant `grants` (SQL privilege list) on `on`."""
        if not _NAME_RE.match(name):
            raise ValueError(f"scratch: unsupported MariaDB user name {name!r}")
        account = f"{sql_quote(name)}@'%'"
        self.execute(
            f"CREATE OR REPLACE USER {account} IDENTIFIED BY {sql_quote(password)};\n"
            f"GRANT {grants} ON {on} TO {account};\n"
        )
        self._passwords[name] = password

    def execute(self, sql: str, database: str | None = None, timeout: float = 300.0) -> list[tuple[str, ...]]:
        """Run SQL as root through the `mariadb` client (batch mode; SQL on stdin, never in argv)."""
        argv = [self._client or self._find_client(), f"--defaults-file={self.option_file}", "-N", "-B"]
        if database is not None:
            argv.append(f"--database={database}")
        return self._run_client(argv, sql, timeout)

    # -- hooks ------------------------------------------------------------------------------------
    def _find_client(self) -> str:
        self._client = require_binary("mariadb", "Debian's mariadb-client")
        return self._client

    def _prepare(self) -> None:
        self._mariadbd = require_binary("mariadbd", "Debian's mariadb-server", sbin=True)
        self._find_client()
        if not self.datadir.exists():
            shutil.copytree(_mariadb_template(), self.datadir, symlinks=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        if len(str(self.dir / "mysqld.sock")) > _UNIX_SOCKET_MAX and self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="bkd-my-"))
        self.socket.unlink(missing_ok=True)  # left by a kill(): would pass the readiness probe too early

    def _argv(self) -> list[str]:
        argv = [
            self._mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-name-resolve",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--tmpdir={self.dir / 'tmp'}",
            "--innodb-buffer-pool-size=64M",
            f"--innodb-log-file-size={_INNODB_LOG_SIZE}",
            "--innodb-flush-log-at-trx-commit=2",  # survives kill(); only an OS crash loses commits
            "--innodb-doublewrite=0",
            "--skip-log-bin",
            "--event-scheduler=ON",
            "--performance-schema=OFF",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        return argv + list(self.extra_args)

    def _probe(self) -> bool:
        return self.socket.exists()

    def _after_start(self) -> None:
        pw = sql_quote(self.root_password)
        sql = (
            f"CREATE OR REPLACE USER 'root'@'127.0.0.1' IDENTIFIED BY {pw};\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket"
            f" OR mysql_native_password USING PASSWORD({pw});\n"
        )
        admin = [self._client, "--no-defaults", f"--socket={self.socket}", f"--user={current_user()}"]
        self._run_client([*admin, "-N", "-B"], sql, 60.0)

    def _cleanup(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _run_client(self, argv: list[str], sql: str, timeout: float) -> list[tuple[str, ...]]:
        done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ScratchError(f"scratch: mariadb on port {self.port}: {done.stderr.strip()}")
        return [tuple(_unescape_batch(f) for f in line.split("\t")) for line in done.stdout.splitlines()]


# ---------------------------------------------------------------------------------------------------
# OpenSSH
# ---------------------------------------------------------------------------------------------------


