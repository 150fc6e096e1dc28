"""RemoteShell against a real sshd: one shell, many commands, each with its own exit status and output."""

from __future__ import annotations

import shlex
from pathlib import Path

from backupd.engine.remote import RemoteShell, connect
from backupd.lab.sshd import SSHD
from backupd.settings import SSHCfg


def test_remote_shell_runs_commands_in_one_session(sshd: SSHD, tmp_path: Path) -> None:
    odd = tmp_path / "it's a \"file\"; $(touch pwned)"
    odd.write_bytes(b"x" * 1234)
    with connect(SSHCfg.model_validate(sshd.ssh_config())) as conn:
        shell = RemoteShell(conn)
        try:
            assert shell.run("printf 'no newline'") == (0, "no newline")
            assert shell.run("echo out; echo err >&2; exit 3") == (3, "out\nerr")
            assert shell.run("cat") == (0, "")  # stdin is /dev/null: a reader cannot hang the shell
            rc, out = shell.run(f"stat -c %s -- {shlex.quote(str(odd))}")
            assert (rc, out) == (0, "1234")
            assert not (tmp_path / "pwned").exists()
            rc, out = shell.run("stat -- /nonexistent")
            assert rc == 1 and "No such file" in out
            pids = {shell.run("echo $$")[1] for _ in range(5)}  # $$ is the session's shell, even in ( )
            assert len(pids) == 1 and pids.pop().isdigit()
        finally:
            shell.close()
