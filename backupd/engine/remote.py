"""SSH: Fabric connections with strict host keys, remote commands streamed back, rsync command lines.

Host keys are always checked (never auto-added): a backup machine that silently trusts a new key would
copy a stranger's data, or hand the database password to one.
"""

from __future__ import annotations

import secrets
import shlex
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import paramiko
from fabric import Config, Connection

from backupd.engine.pipeline import ArtifactWriter
from backupd.engine.procs import CommandResult, last_line
from backupd.errors import StepError
from backupd.settings import SSHCfg

CONNECT_TIMEOUT = 15


def ssh_options(ssh: SSHCfg) -> list[str]:
    """Options for the OpenSSH client (used by rsync -e): batch mode, strict keys, only our key."""
    opts = [
        "-p",
        str(ssh.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if ssh.known_hosts is not None:
        opts += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
    if ssh.key_file is not None:
        opts += ["-o", "IdentitiesOnly=yes", "-i", str(ssh.key_file)]
    return opts


def rsync_link_options(ssh: SSHCfg) -> list[str]:
    """Per-link rsync options: `bwlimit` keeps a backup from saturating a WAN link to the primary network."""
    return [f"--bwlimit={ssh.bwlimit}"] if ssh.bwlimit else []


def rsync_argv(
    ssh: SSHCfg | None, source: str, dest: Path, exclude: Sequence[str] = (), keep: Sequence[str] = ()
) -> list[str]:
    """rsync of `source` (a directory on the SSH host, or local without ssh) into the mirror `dest`.

    `-a --delete` makes the mirror an exact copy so each run transfers only what changed; the trailing
    slashes copy the directory's content, not the directory itself. Devices, fifos and sockets are skipped
    (a restore refuses them) and named on stdout (`--info=skip1`). `keep` paths are left out of this
    transfer and protected from its deletions: a second rsync fills them (followed symlinks).
    """
    argv = ["rsync", "-a", "--no-devices", "--no-specials", "--info=skip1", "--delete", "--delete-excluded",
            "--numeric-ids", "--stats"]
    for pattern in exclude:
        argv.append(f"--exclude={pattern}")
    for path in keep:
        argv += [f"--filter=P /{path}", f"--exclude=/{path}"]
    src = source.rstrip("/") + "/"
    if ssh is not None:
        argv += [*rsync_link_options(ssh), "-e", shlex.join(["ssh", *ssh_options(ssh)])]
        src = f"{ssh.target}:{src}"
    argv += ["--", src, str(dest).rstrip("/") + "/"]
    return argv


def _connect_error(ssh: SSHCfg, exc: BaseException) -> StepError:
    if isinstance(exc, paramiko.AuthenticationException):
        msg = f"SSH key refused for user {ssh.user}"
    elif isinstance(exc, paramiko.BadHostKeyException):
        msg = "SSH host key does not match known_hosts"
    elif isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        msg = f"SSH host key unknown: add it to {ssh.known_hosts or '~/.ssh/known_hosts'}"
    elif isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        msg = "SSH connection refused"
    elif isinstance(exc, socket.timeout | TimeoutError):
        msg = "SSH connection timed out"
    elif isinstance(exc, socket.gaierror):
        msg = f"cannot resolve host name: {exc.strerror}"
    else:
        msg = f"SSH connection failed: {exc}"
    return StepError("ssh connect", msg, host=ssh.label)


@contextmanager
def connect(ssh: SSHCfg) -> Iterator[Connection]:
    """A Fabric connection that rejects unknown host keys and uses only the configured key."""
    connect_kwargs: dict[str, object] = {"allow_agent": False, "look_for_keys": ssh.key_file is None}
    if ssh.key_file is not None:
        connect_kwargs["key_filename"] = str(ssh.key_file)
    conn = Connection(
        ssh.host,
        user=ssh.user,
        port=ssh.port,
        config=Config(overrides={"load_ssh_configs": False}),
        connect_timeout=CONNECT_TIMEOUT,
        connect_kwargs=connect_kwargs,
    )
    client: paramiko.SSHClient = conn.client
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        if ssh.known_hosts is not None:
            client.load_host_keys(str(ssh.known_hosts))
        else:
            client.load_system_host_keys()
        conn.open()
        transport = client.get_transport()
        if transport is not None:  # idle through a long BGSAVE: keep NAT/firewall state alive, as rsync's ssh does
            transport.set_keepalive(15)
    except (OSError, paramiko.SSHException) as exc:
        conn.close()
        raise _connect_error(ssh, exc) from None
    try:
        yield conn
    finally:
        conn.close()


def remote_stream(
    conn: Connection, command: str, writer: ArtifactWriter, stdin_data: bytes | None = None
) -> CommandResult:
    """Run `command` on the host; its stdout streams into `writer` (bytes, never decoded).

    `stdin_data` (an option file with the password) goes through the channel's stdin, so the secret is
    never written to the remote disk nor placed on a command line.
    """
    transport = conn.client.get_transport()
    assert transport is not None
    chan = transport.open_session()
    chan.settimeout(None)
    chan.exec_command(command)
    if stdin_data is not None:
        chan.sendall(stdin_data)
    chan.shutdown_write()
    errbuf = bytearray()

    def drain_stderr() -> None:
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                return
            if len(errbuf) < 65536:
                errbuf.extend(data)

    t = threading.Thread(target=drain_stderr, daemon=True)
    t.start()
    try:
        while True:
            data = chan.recv(1 << 20)
            if not data:
                break
            writer.write(data)
        rc = chan.recv_exit_status()
    finally:
        t.join(timeout=5)
        chan.close()
    lines = [x for x in errbuf.decode("utf-8", "replace").splitlines() if x.strip()]
    return CommandResult(rc, lines[-50:])


def remote_run(conn: Connection, command: str, stdin_data: bytes | None = None) -> tuple[int, str, str]:
    """A short remote command with captured text output (checks, listings)."""
    transport = conn.client.get_transport()
    assert transport is not None
    chan = transport.open_session()
    chan.exec_command(command)
    if stdin_data is not None:
        chan.sendall(stdin_data)
    chan.shutdown_write()
    out = chan.makefile("rb").read()
    err = chan.makefile_stderr("rb").read()
    rc = chan.recv_exit_status()
    chan.close()
    return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class RemoteShell:
    """One `sh` on the host for a run's small checks (stat before and after a copy).

    Every `exec` costs a new SSH session (about 0.1 s: sshd forks, sets up the session, starts a shell); a
    command written to a shell that is already running costs one round trip (about 2 ms here).
    """

    def __init__(self, conn: Connection, timeout: float = 120.0) -> None:
        transport = conn.client.get_transport()
        assert transport is not None
        self.timeout = timeout
        self._chan = transport.open_session()
        self._chan.settimeout(timeout)
        self._chan.set_combine_stderr(True)  # the shell's own complaints too: nothing left unread to fill a window
        self._chan.exec_command("sh")
        self._stdin = self._chan.makefile_stdin("wb")
        self._stdout = self._chan.makefile("rb")
        self._marker = f"__backupd_{secrets.token_hex(8)}__"

    def run(self, command: str) -> tuple[int, str]:
        """(exit status, stdout and stderr together); raises OSError if the shell went away."""
        self._stdin.write(f"( {command}\n) 2>&1 </dev/null; printf '\\n{self._marker} %d\\n' $?\n".encode())
        self._stdin.flush()
        lines: list[str] = []
        while True:
            raw = self._stdout.readline()
            if not raw:
                raise OSError(f"the remote shell ended: {last_line(lines, 'no output')}")
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(self._marker):
                return int(line.split()[-1]), "\n".join(lines).strip()
            lines.append(line)

    def close(self) -> None:
        self._chan.close()


def reach_ssh(ssh: SSHCfg) -> str:
    """`check-config --connect` for any job with an `[ssh]` table: log in and run `true`."""
    with connect(ssh) as conn:
        rc, _, err = remote_run(conn, "true")
        if rc != 0:
            raise StepError("ssh check", last_line(err), host=ssh.label)
    return f"ssh {ssh.target}:{ssh.port}"
