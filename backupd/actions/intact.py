"""Trusting a stored backup before anything is written from it: every artifact re-hashed against its
manifest (and, when thorough, its format check run again). Shared by restore, restore to a point and the
drills, so they refuse the same damage with the same line."""

from __future__ import annotations

from typing import Any

from backupd.errors import StepError
from backupd.store.backups import StoredBackup
from backupd.store.verify import age_header_problems, integrity_problems, verify_backup


def ensure_intact(backup: StoredBackup, step: str = "verify", *, thorough: bool = True) -> None:
    """Refuse (before writing anything) a backup whose artifacts are missing, resized or re-hashed.

    `thorough` also re-runs each format check (a full decompress + parse). A restore skips that: a
    matching sha256 proves the bytes are the ones structurally verified at commit, and the second full
    pass would nearly double a large restore. Drills run it, since they exist to be thorough.
    """
    if thorough:
        problems = [(a["artifact"], a["problems"][0]) for a in verify_backup(backup) if not a["ok"]]
    else:
        problems = [(a["file"], p) for a in backup.manifest.get("artifacts", []) if (p := checksum_problem(backup, a))]
    if not backup.manifest.get("artifacts"):
        problems.append(("manifest", "lists no artifacts"))
    if problems:
        name, why = problems[0]
        raise StepError(step, f"backup {backup.backup_id}: {name}: {why}; refusing to restore", job=backup.job)


def checksum_problem(backup: StoredBackup, art: dict[str, Any]) -> str | None:
    path = backup.path / art["file"]
    problems = integrity_problems(path, art)
    if not problems and art.get("encrypted"):
        problems = age_header_problems(path, art)
    return problems[0] if problems else None
