"""A throwaway OpenSSH sshd on a loopback port, for the tests and the demo (never used in production)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from backupd.scratch.base import ScratchServer, current_user, require_binary


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


