"""Files dumps: rsync over SSH into a per-job staging mirror, then a tar of the mirror streamed into the store.

The mirror persists between runs, so each run transfers only what changed; the tar is made locally with
GNU tar (sorted, numeric owners) and verified by our tar reader on the way to disk.
"""

from __future__ import annotations

from typing import Any

from backupd.engine.procs import describe_exit, last_line, run_capture, stream_command
from backupd.engine.remote import rsync_argv
from backupd.errors import StepError
from backupd.formats.tarball import TarChecker
from backupd.fsutil import ensure_private_dir
from backupd.settings import SSHCfg
from backupd.sources.base import DumpContext
from backupd.sources.files.config import FilesPart

RSYNC_VANISHED = 24  # files vanished during the transfer: normal on a live site


def tar_argv(directory: str) -> list[str]:
    return ["tar", "--sort=name", "--numeric-owner", "--format=gnu", "-C", directory, "-cf", "-", "."]


def sync(ctx: DumpContext, part: FilesPart, ssh: SSHCfg | None) -> dict[str, Any]:
    mirror = ensure_private_dir(ctx.staging_dir / "files")
    host = ssh.label if ssh else "localhost"
    ctx.events.event("step", step="rsync", host=host, source=part.source)
    proc = run_capture(rsync_argv(ssh, part.source, mirror, part.exclude), timeout=None)
    if proc.returncode not in (0, RSYNC_VANISHED):
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("rsync error:")]
        raise StepError("rsync", f"rsync exited {proc.returncode}: {last_line(lines)}", host=host)
    stats = {}
    for line in proc.stdout.splitlines():
        if line.startswith("Total transferred file size:") or line.startswith("Number of regular files"):
            key, _, value = line.partition(":")
            stats[key.strip()] = value.strip()
    if proc.returncode == RSYNC_VANISHED:
        ctx.events.event("warning", step="rsync", host=host, message="some files vanished during transfer")

    with ctx.writing("files", "tar", ".tar", TarChecker(), label="files.tar", host=host) as writer:
        result = stream_command(tar_argv(str(mirror)), writer)
        if result.returncode != 0:
            raise StepError("tar", f"tar {describe_exit(result.returncode)}: {last_line(result.stderr)}", host=host)
    return {"host": host, "source": part.source, "rsync": stats}
