"""The local store: `{root}/{job}/{backup_id}/` directories with a manifest, committed by rename.

A backup exists only once its `.partial-ID` directory was fsynced and renamed, after verification; a killed
or failed run leaves at most a `.partial-*` directory, which is never listed and is swept by the next run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backupd.errors import BackupdError
from backupd.fsutil import DIR_MODE, ensure_private_dir, fsync_dir, write_private_file

PARTIAL_PREFIX = ".partial-"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = "manifest.json"
VERDICT = "verification.json"  # the last re-verification, beside the manifest (docs/operations.md)


def make_backup_id(when: datetime) -> str:
    return when.astimezone(UTC).strftime(ID_FORMAT)


def parse_backup_id(backup_id: str) -> datetime:
    return datetime.strptime(backup_id, ID_FORMAT).replace(tzinfo=UTC)


def is_backup_id(name: str) -> bool:
    try:
        parse_backup_id(name)
    except ValueError:
        return False
    return True


@dataclass
class StoredBackup:
    job: str
    backup_id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(int(a.get("bytes", 0)) for a in self.manifest.get("artifacts", []))

    verdict: dict[str, Any] = field(default_factory=dict)  # VERDICT's content: {"local": {...}, "s3": {...}}

    @property
    def verified(self) -> bool:
        """Verified at commit and not failed by a later `verify` (the store holds both, so a catalog rebuild
        can never turn a backup found bad back into a good one)."""
        return bool(self.manifest.get("verified")) and self.verdict.get("local", {}).get("ok") is not False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_verdict(path: Path) -> dict[str, Any]:
    """A backup's recorded verifications; an unreadable record counts as a failed one, never as none."""
    try:
        verdict = json.loads((path / VERDICT).read_text())
        if not isinstance(verdict, dict):
            raise ValueError("not a JSON object")
        return verdict
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"local": {"ok": False, "level": "record", "problems": [f"{VERDICT} is unreadable"]}}


@dataclass(frozen=True)
class BrokenBackup:
    """A committed backup directory whose manifest cannot be read: it can be neither trusted nor restored."""

    job: str
    backup_id: str
    path: Path
    reason: str


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def job_dir(self, job: str) -> Path:
        return self.root / job

    def new_partial(self, job: str, started: datetime) -> tuple[str, Path]:
        """Create the `.partial-ID` directory; the ID moves on a second if a backup of that second exists."""
        ensure_private_dir(self.job_dir(job))
        when = started
        while True:
            backup_id = make_backup_id(when)
            final = self.job_dir(job) / backup_id
            partial = self.job_dir(job) / f"{PARTIAL_PREFIX}{backup_id}"
            if not final.exists() and not partial.exists():
                partial.mkdir(mode=DIR_MODE)
                return backup_id, partial
            when += timedelta(seconds=1)

    def commit(self, job: str, backup_id: str, partial: Path, manifest: dict[str, Any]) -> Path:
        """Write the manifest, fsync everything, rename into place, fsync the job directory."""
        for entry in partial.iterdir():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        write_private_file(
            partial / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        )
        fsync_dir(partial)
        final = self.job_dir(job) / backup_id
        os.rename(partial, final)
        fsync_dir(self.job_dir(job))
        return final

    def discard(self, partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)

    def sweep_partials(self, job: str) -> list[Path]:
        """Remove `.partial-*` left by killed runs. Only call while holding the job's lock."""
        removed = []
        d = self.job_dir(job)
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed

    def jobs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def backups(self, job: str) -> list[StoredBackup]:
        """Committed backups of a job with a readable manifest, oldest first (`broken()` lists the others)."""
        return [b for b in self.scan(job) if isinstance(b, StoredBackup)]

    def broken(self, job: str) -> list[BrokenBackup]:
        """Backup directories whose manifest is missing or unreadable: shown, never verified, never deleted."""
        return [b for b in self.scan(job) if isinstance(b, BrokenBackup)]

    def scan(self, job: str) -> list[StoredBackup | BrokenBackup]:
        """Every directory named like a backup id, oldest first, read or found broken.

        Other directories under a job (a PITR log archive, say) are not backups and are not listed."""
        out: list[StoredBackup | BrokenBackup] = []
        for path in self._backup_dirs(job):
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                if not isinstance(manifest, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                out.append(BrokenBackup(job, path.name, path, f"{MANIFEST} is missing"))
                continue
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(":")[0]
                out.append(BrokenBackup(job, path.name, path, f"{MANIFEST} is unreadable ({why})"))
                continue
            out.append(StoredBackup(job, path.name, path, manifest, read_verdict(path)))
        return out

    def record_verdict(
        self, backup: StoredBackup, where: str, ok: bool, level: str, problems: list[str], **extra: str
    ) -> dict[str, Any]:
        """Record one verification of `backup` (`where`: "local" or "s3") in the store, atomically.

        A later good verification replaces a failed one, so a repaired backup counts again."""
        entry = {**backup.verdict.get(where, {}), "ok": ok, "level": level, "at": _now(), "problems": problems[:5]}
        verdict = {**backup.verdict, where: {**entry, **extra}}
        tmp = backup.path / f".{VERDICT}.tmp"
        write_private_file(tmp, json.dumps(verdict, indent=2, sort_keys=True).encode() + b"\n")
        os.replace(tmp, backup.path / VERDICT)
        fsync_dir(backup.path)
        backup.verdict = verdict
        return verdict

    def record_s3_copy(self, backup: StoredBackup, copy: dict[str, Any]) -> None:
        """Keep a new S3 copy's record (its objects' VersionIds, its Object Lock) in the backup's "s3"
        verification entry, atomically. A verdict already there stays (a copy found bad and shipped again
        is "ok" only once read back), a first copy counts as checked by its HEADs."""
        first = {"ok": True, "level": "head", "at": _now(), "problems": []}
        verdict = {**backup.verdict, "s3": {**backup.verdict.get("s3", first), **copy}}
        tmp = backup.path / f".{VERDICT}.tmp"
        write_private_file(tmp, json.dumps(verdict, indent=2, sort_keys=True).encode() + b"\n")
        os.replace(tmp, backup.path / VERDICT)
        fsync_dir(backup.path)
        backup.verdict = verdict

    def _backup_dirs(self, job: str) -> Iterator[Path]:
        d = self.job_dir(job)
        if not d.is_dir():
            return
        for entry in sorted(d.iterdir()):
            if entry.is_dir() and is_backup_id(entry.name):
                yield entry

    def find(self, backup_id: str, job: str | None = None) -> StoredBackup | None:
        for name in [job] if job else self.jobs():
            path = self.job_dir(name) / backup_id
            if path.is_dir():
                for b in self.backups(name):
                    if b.backup_id == backup_id:
                        return b
        return None

    def delete(self, backup: StoredBackup) -> None:
        """Remove a committed backup: rename to a partial name first so a crash never leaves half of one.

        A backup a restore or drill is reading (see `reading`) is not deleted: BackupInUseError, and the
        next prune tries again.
        """
        fd = os.open(backup.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupInUseError(backup) from None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                # a store on NFS: flock becomes a byte-range lock, which a directory fd cannot take for
                # writing (EBADF). Delete unlocked, as before this guard existed.
            tomb = backup.path.parent / f"{PARTIAL_PREFIX}deleting-{backup.backup_id}"
            os.rename(backup.path, tomb)
            fsync_dir(backup.path.parent)
            shutil.rmtree(tomb)
        finally:
            os.close(fd)


class BackupInUseError(OSError):
    def __init__(self, backup: StoredBackup) -> None:
        super().__init__(errno.EBUSY, "being read by a restore or drill: kept, the next prune tries again")
        self.backup = backup


@contextmanager
def reading(backup: StoredBackup) -> Iterator[StoredBackup]:
    """Hold a shared lock on the backup's directory while a restore or drill reads it, so that a prune
    running at the same time (a scheduled backup's retention) skips it instead of deleting it mid-read."""
    gone = BackupdError(f"backup {backup.job}/{backup.backup_id} was deleted (pruned) just now: pick another")
    try:
        fd = os.open(backup.path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise gone from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune is deleting this very backup
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        if not (backup.path / MANIFEST).is_file():
            raise gone
        yield backup
    finally:
        os.close(fd)


_NO_LOCKS = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # filesystems without flock
