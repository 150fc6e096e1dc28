"""Throwaway local server processes: the base every scratch server shares (free ports, readiness, stop by PID).

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
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    pass

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

