"""Throwaway local server processes: the tests' fixtures, `backupd demo` and restore drills' targets.

Each server is a real process on a free 127.0.0.1 port, in its own temp directory, started and stopped by
the PID we spawned (never by name), and stopped again at interpreter exit so a crashed test run does not
leave servers behind. No Docker engine runs on these machines, so this is how we get real servers.

Readiness is "our PID owns a listening socket on the port" (from /proc) plus a protocol probe: a port picked
with `free_port()` can be taken by someone else before the server binds it, and a probe alone could then
be answered by the wrong server. When the server loses that race it exits with "Address already in use" and
we retry on a new port.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import quote

if TYPE_CHECKING:
    import redis as redis_lib
    from mypy_boto3_s3 import S3Client
    from pymongo import MongoClient

LOOPBACK = "127.0.0.1"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_PORT_TAKEN = "already in use"  # sshd, mariadbd, redis, werkzeug and asyncio all say this
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes; leave room


class ScratchError(RuntimeError):
    """A scratch server could not be set up, started or used; the message is one line plus a log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago; servers retry on collision since another may grab it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str, package: str, *, sbin: bool = False) -> str:
    """Absolute path of `name`, or a one-line error saying which package provides it."""
    search = os.environ.get("PATH", os.defpath)
    if sbin:
        search = os.pathsep.join([search, *_SBIN_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise ScratchError(f"scratch: {name} not found (install {package})")
    return os.path.abspath(found)


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def pid_listens(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a listening TCP socket on `port` (Linux /proc)."""
    if not Path("/proc/net/tcp").exists():  # not Linux: settle for "something accepts"
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
        return False
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def _write_private(path: Path, text: str) -> Path:
    """Write a file that holds a secret: 0600 from the first byte (and again if it already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path


def _tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(offset, path.stat().st_size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# Every started server until it is stopped; stopped at exit so nothing outlives the interpreter.
_LIVE: set[ScratchServer] = set()
_LIVE_LOCK = threading.Lock()


def stop_all() -> None:
    """Stop every scratch server this process started (registered with atexit)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()
    _drop_mariadb_template()


atexit.register(stop_all)


class ScratchServer:
    """Lifecycle shared by all servers: temp dir, launch on a free port, wait ready, stop by PID.

    Subclasses fill in `_prepare` (files before the first launch), `_argv` (may write port-dependent
    config), `_probe` (protocol-level readiness) and `_after_start` (e.g. set passwords).
    """

    name: ClassVar[str] = "server"
    ready_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 15.0
    port_attempts: ClassVar[int] = 4

    def __init__(self, base_dir: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        self.host = LOOPBACK
        self.port = 0  # kept after stop() so a restart comes back on the same port when it can
        self.base_dir = base_dir
        self.extra_args = tuple(extra_args)
        self.start_seconds: float | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public lifecycle -------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        """The instance's temp directory (exists from start() until stop())."""
        if self._dir is None:
            raise ScratchError(f"scratch: {self.name} has no directory (not started)")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start (or restart, reusing a kept directory) and return only once clients can connect."""
        if self.running:
            return self
        if self._proc is not None:  # it died on its own: reap it before launching again
            self._proc.wait()
            self._proc = None
        began = time.monotonic()
        if self._dir is None:
            if self.base_dir is not None:
                self.base_dir.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f"backupd-{self.name}-", dir=self.base_dir))
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._prepare()
            self._launch_until_ready()
            self._after_start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, *, keep_dir: bool = False) -> None:
        """SIGTERM our PID, wait, SIGKILL it if it lingers; then remove the directory unless kept."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self.stop_timeout)
        if keep_dir:
            return
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._cleanup()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL our PID (a crash, for tests); the directory stays until stop()."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def log_tail(self, lines: int = 25) -> str:
        return _tail(self.log_path, lines=lines) if self._dir is not None else "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"

    # -- subclass hooks ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Check binaries and lay out files; must be idempotent (a restart reuses a kept dir)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """Protocol-level readiness once our PID listens on the port."""
        return True

    def _after_start(self) -> None:
        """Work that needs the running server (passwords, users)."""

    def _cleanup(self) -> None:
        """Remove anything kept outside self.dir."""

    # -- launching --------------------------------------------------------------------------------
    def _launch_until_ready(self) -> None:
        for attempt in range(self.port_attempts):
            if attempt or not self.port:
                self.port = free_port()
            if self._launch_once():
                return
        raise ScratchError(f"scratch: {self.name} lost the race for a free port {self.port_attempts} times")

    def _launch_once(self) -> bool:
        """Launch and wait; False when the port was taken under us (caller retries on a new one)."""
        argv = self._argv()
        log_path = self.log_path
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self._proc = proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        deadline = time.monotonic() + self.ready_timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                self._proc = None
                tail = _tail(log_path, offset)
                if _PORT_TAKEN in tail.lower():
                    return False
                raise ScratchError(f"scratch: {self.name} exited with status {rc} during start-up; log tail:\n{tail}")
            if pid_listens(proc.pid, self.port) and self._probe():
                return True
            if time.monotonic() > deadline:
                raise ScratchError(
                    f"scratch: {self.name} not ready on {self.host}:{self.port} within "
                    f"{self.ready_timeout:.0f}s; log tail:\n{_tail(log_path, offset)}"
                )
            time.sleep(0.02)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


# ---------------------------------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------------------------------

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


class SSHD(ScratchServer):
    """A real OpenSSH `sshd`: own host key, key-only login for the current user, 127.0.0.1 only."""

    name = "sshd"

    def __init__(self, base_dir: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        super().__init__(base_dir, extra_args)
        self.user = current_user()
        self._sshd = ""

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    def ssh_config(self) -> dict[str, str | int]:
        """The job config's `[ssh]` table for this server."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
        }

    def ssh_argv(self) -> list[str]:
        """`ssh` with this server's key and strict host checking, minus the destination (`user@host`)."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def _prepare(self) -> None:
        self._sshd = require_binary("sshd", "Debian's openssh-server", sbin=True)
        keygen = require_binary("ssh-keygen", "Debian's openssh-client")
        if os.geteuid() == 0:  # privilege separation directory, normally made by the init system
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        for key, comment in ((self.host_key, "backupd-scratch-host"), (self.client_key, "backupd-scratch")):
            if not key.exists():
                subprocess.run(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    check=True,
                )
        pub = self.client_key.with_name(self.client_key.name + ".pub").read_text()
        (self.dir / "authorized_keys").write_text(pub)

    def _argv(self) -> list[str]:
        self.config_path.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "MaxStartups 100\n"
            "MaxSessions 50\n"
            "Subsystem sftp internal-sftp\n"
        )
        host_pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        return [self._sshd, "-D", "-e", "-f", str(self.config_path), *self.extra_args]

    def _probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                return sock.recv(256).startswith(b"SSH-2.0")
        except OSError:
            return False


# ---------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------


def _redis_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Redis(ScratchServer):
    """`redis-server` with no persistence of its own; a replica of `master` when one is given.

    The config (password included) is a 0600 file, not argv. RDB files land in `dir` as `dump.rdb`.
    """

    name = "redis"

    def __init__(
        self,
        base_dir: Path | None = None,
        master: Redis | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, extra_args)
        self.master = master
        self.password = password
        self._server = ""

    @property
    def rdb_path(self) -> Path:
        return self.dir / "dump.rdb"

    def client(self, **kwargs: Any) -> redis_lib.Redis:
        import redis

        options: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 5}
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, password=self.password, **options)

    def wait_replica_linked(self, timeout: float = 15.0) -> None:
        """Poll INFO replication until `master_link_status:up` (the initial sync has finished)."""
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        with self.client() as conn:
            while True:
                with contextlib.suppress(OSError, ConnectionError):
                    info = conn.info("replication")
                    if info.get("master_link_status") == "up":
                        return
                if time.monotonic() > deadline:
                    raise ScratchError(
                        f"scratch: redis replica on port {self.port} not linked within {timeout:.0f}s "
                        f"(master_link_status={info.get('master_link_status')!r})"
                    )
                time.sleep(0.05)

    def _prepare(self) -> None:
        self._server = require_binary("redis-server", "Debian's redis-server")
        if self.master is not None and not self.master.port:
            raise ScratchError("scratch: start the redis master before its replica")

    def _argv(self) -> list[str]:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f"dir {_redis_value(str(self.dir))}",
            "dbfilename dump.rdb",
            'save ""',
            "appendonly no",
            "daemonize no",
            'logfile ""',
            "repl-diskless-sync no",
            "repl-diskless-sync-delay 0",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_redis_value(self.password)}")
        if self.master is not None:
            lines.append(f"replicaof {self.master.host} {self.master.port}")
            if self.master.password is not None:
                lines.append(f"masterauth {_redis_value(self.master.password)}")
        conf = _write_private(self.dir / "redis.conf", "\n".join(lines) + "\n")
        return [self._server, str(conf), *self.extra_args]

    def _probe(self) -> bool:
        try:
            with self.client(socket_timeout=2, socket_connect_timeout=1) as conn:
                return bool(conn.ping())
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------------------------------


class MotoS3(ScratchServer):
    """moto's standalone server as a real HTTP process; any credentials are accepted."""

    name = "moto-s3"
    access_key: ClassVar[str] = "testing"
    secret_key: ClassVar[str] = "testing"  # noqa: S105 (moto accepts any credentials)
    region: ClassVar[str] = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a child process (e.g. `backupd`) that should reach this server with boto3."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _prepare(self) -> None:
        if importlib.util.find_spec("moto") is None:
            raise ScratchError("scratch: moto not found (install the dev extra: moto[server])")

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port), *self.extra_args]

    def _probe(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------------------
# MongoDB (mongod, or the nx-27017 stand-in)
# ---------------------------------------------------------------------------------------------------

MongoKind = Literal["mongod", "nx-27017"]


class MongoServer(ScratchServer):
    """A real `mongod` when one is on PATH, else nx-27017 (MongoDB wire protocol over SQLite).

    nx-27017 has known gaps (e.g. collection options and index directions do not round-trip); `kind`
    tells tests which one they got.
    """

    name = "mongo"

    def __init__(
        self,
        base_dir: Path | None = None,
        kind: Literal["auto", "mongod", "nx-27017"] = "auto",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, extra_args)
        if kind == "auto":
            kind = "mongod" if shutil.which("mongod") else "nx-27017"
        self.kind: MongoKind = kind
        self._mongod = ""

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def dbpath(self) -> Path:
        return self.dir / "db"

    def client(self, **kwargs: Any) -> MongoClient[dict[str, Any]]:
        from pymongo import MongoClient

        options: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "directConnection": True}
        options.update(kwargs)
        return MongoClient(self.uri, **options)

    def _prepare(self) -> None:
        if self.kind == "mongod":
            self._mongod = require_binary("mongod", "MongoDB's mongod")
        elif importlib.util.find_spec("nx_27017") is None:
            raise ScratchError("scratch: nx-27017 not found (install the dev extra: nx-27017)")
        self.dbpath.mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        if self.kind == "mongod":
            base = [self._mongod, "--dbpath", str(self.dbpath), "--port", str(self.port)]
            return [*base, "--bind_ip", self.host, "--nounixsocket", *self.extra_args]
        return [
            sys.executable,
            "-m",
            "nx_27017.nx_27017",
            "--data-dir",
            str(self.dbpath),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-file",
            str(self.dir / "nx-27017.log"),
            "--pid-file",
            str(self.dir / "nx-27017.pid"),
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        try:
            with self.client(serverSelectionTimeoutMS=1000, connectTimeoutMS=1000) as conn:
                conn.admin.command("ping")
                return True
        except Exception:
            return False
