"""Restoring a tar artifact (unsafe members refused before anything is extracted) and the drill's tree check."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from backupd.engine.compression import open_decompressed
from backupd.errors import BackupdError, StepError, UsageError
from backupd.formats.tarball import ExtractRule, tree_digest
from backupd.fsutil import ensure_private_dir
from backupd.sources.base import (
    Check,
    DrillContext,
    DrillResult,
    Progress,
    Restored,
    artifacts,
    compare,
    no_progress,
)
from backupd.store.backups import StoredBackup


def _kind(member: tarfile.TarInfo) -> str:
    """The member's type as the tar check names it (f, d, l, h, or o for devices, fifos and the rest)."""
    if member.isreg():
        return "f"
    if member.isdir():
        return "d"
    if member.issym():
        return "l"
    if member.islnk():
        return "h"
    return "o"


def refused(member: tarfile.TarInfo, rule: ExtractRule) -> str | None:
    """The backup-time check's own rule (formats.tarball.ExtractRule), applied to a member tarfile read."""
    return rule.problem(os.fsencode(member.name), _kind(member), os.fsencode(member.linkname))


def scan_tar(path: Path) -> list[str]:
    """One streaming pass over the listing: every refused member, so nothing is written if any is found."""
    problems = []
    rule = ExtractRule()
    _, stream = open_decompressed(path)
    with stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            why = refused(member, rule)
            if why:
                problems.append(why)
    return problems


def directory_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def extract_tar(path: Path, dest: Path, *, yes: bool, progress: Progress = no_progress) -> dict[str, int]:
    """Extract into `dest` (its root is the source's root); unsafe listings are refused up front."""
    if dest.exists() and not dest.is_dir():
        raise BackupdError(f"restore: target {dest} exists and is not a directory")
    if not directory_is_empty(dest) and not yes:
        raise BackupdError(f"restore: target directory {dest} is not empty; use --yes to restore over it")
    problems = scan_tar(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StepError("restore", f"{path.name}: unsafe member {problems[0]}{more}; nothing extracted")
    dest.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    _, stream = open_decompressed(path)
    with stream, tarfile.open(fileobj=stream, mode="r|") as tf:

        rule = ExtractRule()  # applied again while extracting: the listing cannot change between passes unseen

        def members() -> Iterator[tarfile.TarInfo]:
            for m in tf:
                why = refused(m, rule)
                if why:
                    raise StepError("restore", f"{path.name}: unsafe member {why}")
                if m.isfile():
                    counts["files"] += 1
                    counts["bytes"] += m.size
                    progress(m.size)
                elif m.isdir():
                    counts["dirs"] += 1
                elif m.issym():
                    counts["symlinks"] += 1
                yield m

        try:
            # symlinks are restored verbatim, as tar and rsync do; the "tar" filter still refuses any write
            # whose real path (symlinks resolved) would land outside `dest`
            tf.extractall(dest, members=members(), filter="tar")
        except tarfile.TarError as exc:
            raise StepError("restore", f"{path.name}: {exc}") from None
    return counts


def restore_tar_artifacts(
    backup: StoredBackup, dest: Path, *, yes: bool, progress: Progress = no_progress
) -> list[Restored]:
    arts = artifacts(backup, "tar")
    if not arts:
        raise UsageError(f"restore: backup {backup.backup_id} holds no file archive")
    out = []
    for art in arts:
        began = time.monotonic()
        counts = extract_tar(backup.path / art["file"], dest, yes=yes, progress=progress)
        out.append(Restored(art["file"], str(dest), counts, time.monotonic() - began))
    return out




def drill_files(target_dir: str | None, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
    """Extract each tar into a fresh directory (under `target_dir`, else the drill's work dir) and compare the
    tree with the stats the tar check recorded at dump time."""
    base = Path(target_dir) if target_dir else ctx.work
    ensure_private_dir(base)
    checks: list[Check] = []
    seconds = 0.0
    for art in artifacts(backup, "tar"):
        dest = Path(tempfile.mkdtemp(prefix=f"files-{backup.backup_id}-", dir=base))
        try:
            began = time.monotonic()
            extract_tar(backup.path / art["file"], dest, yes=True)
            seconds += time.monotonic() - began
            got = tree_digest(dest)
            stats = art.get("stats", {})
            for key in ("files", "bytes", "symlinks", "tree_sha256"):
                if key in stats:
                    checks.append(compare(f"files {key}", stats[key], got.get(key)))
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    return DrillResult(checks, seconds)
