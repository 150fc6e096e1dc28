"""Files dumps: rsync over SSH into a per-job staging mirror, then a tar of the mirror streamed into the store.

The mirror persists between runs, so each run transfers only what changed; the tar is made locally with
GNU tar (sorted, numeric owners) and verified by our tar reader on the way to disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
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


SKIPPED_RE = re.compile(r'^skipping non-regular file "(.*)"$')
WP_CONTENT_RE = re.compile(rb"""define\(\s*['"](WP_CONTENT_DIR|UPLOADS)['"]\s*,\s*['"]([^'"]+)['"]""")


def _rsync(argv: list[str], host: str) -> tuple[dict[str, str], list[str], bool]:
    """Run one rsync: its --stats figures, the non-regular files it skipped, whether files vanished."""
    proc = run_capture(argv, timeout=None)
    if proc.returncode not in (0, RSYNC_VANISHED):
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("rsync error:")]
        raise StepError("rsync", f"rsync exited {proc.returncode}: {last_line(lines)}", host=host)
    stats, skipped = {}, []
    for line in proc.stdout.splitlines():
        if line.startswith("Total transferred file size:") or line.startswith("Number of regular files"):
            key, _, value = line.partition(":")
            stats[key.strip()] = value.strip()
        elif m := SKIPPED_RE.match(line):
            skipped.append(m.group(1))
    return stats, skipped, proc.returncode == RSYNC_VANISHED


def outside_content_warnings(mirror: Path, links_outside: int) -> list[str]:
    """What the backup does not hold although the site uses it: symlinks leaving `source`, and a WordPress
    content or uploads directory configured outside it (Debian's package keeps wp-content in /var/lib)."""
    warnings = []
    if links_outside:
        warnings.append(
            f"{links_outside} symlink(s) point outside source: their targets are not in this backup "
            "(follow_links backs such paths up as directories)"
        )
    config = mirror / "wp-config.php"
    if config.is_symlink():  # Debian's package: /usr/share/wordpress/wp-config.php -> /etc/wordpress/...
        target = os.readlink(config)
        if target.startswith("/") or ".." in target.split("/"):
            warnings.append(
                f"wp-config.php is a symlink to {target}, outside source: the site's configuration (and where it"
                " puts wp-content) is not in this backup"
            )
    elif config.is_file():
        for key, value in WP_CONTENT_RE.findall(config.read_bytes()[:1 << 20]):
            path = value.decode("utf-8", "replace")
            if path.startswith("/") or ".." in path.split("/"):
                warnings.append(f"wp-config.php sets {key.decode()} to {path}, outside source: not in this backup")
    return warnings


def sync(ctx: DumpContext, part: FilesPart, ssh: SSHCfg | None) -> dict[str, Any]:
    mirror = ensure_private_dir(ctx.staging_dir / "files")
    host = ssh.label if ssh else "localhost"
    ctx.events.event("step", step="rsync", host=host, source=part.source)
    stats, skipped, vanished = _rsync(rsync_argv(ssh, part.source, mirror, part.exclude, part.follow_links), host)
    for path in part.follow_links:  # the trailing slash makes rsync copy the link's target directory
        ctx.events.event("step", step="rsync", host=host, source=f"{part.source.rstrip('/')}/{path}/")
        ensure_private_dir(mirror / path)
        _, more, gone = _rsync(rsync_argv(ssh, f"{part.source.rstrip('/')}/{path}", mirror / path), host)
        skipped += [f"{path}/{p}" for p in more]
        vanished |= gone
    if vanished:
        ctx.events.event("warning", step="rsync", host=host, message="some files vanished during transfer")
    if skipped:
        ctx.warn(f"{len(skipped)} device(s), fifo(s) or socket(s) not backed up: {', '.join(skipped[:3])}",
                 step="rsync", host=host)

    with ctx.writing("files", "tar", ".tar", TarChecker(), label="files.tar", host=host) as writer:
        result = stream_command(tar_argv(str(mirror)), writer)
        if result.returncode != 0:
            raise StepError("tar", f"tar {describe_exit(result.returncode)}: {last_line(result.stderr)}", host=host)
    check = ctx.last.check
    links_outside = int(check.facts.get("links_outside", 0)) if check else 0
    warnings = outside_content_warnings(mirror, links_outside)
    for w in warnings:
        ctx.warn(w, step="files", host=host)
    return {
        "host": host,
        "source": part.source,
        "rsync": stats,
        "links_outside": links_outside,
        "followed": list(part.follow_links),
        "skipped_special": skipped[:1000],
    }
