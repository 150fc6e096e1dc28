"""The age identity (private key) where something needs one: restore, drill, verify, inspect.

`--identity FILE`, else $BACKUPD_AGE_IDENTITY_FILE, else the job's (or the global) `[encryption]
identity_file`. None of them is required until a backup to read is encrypted; then a missing or wrong one is
one line naming the recipients the backup was made for, before anything is written (docs/security.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.engine.crypto import IDENTITY_ENV, can_decrypt, fingerprint, load_identities
from backupd.errors import BackupdError
from backupd.settings import Config
from backupd.store.backups import StoredBackup

HOW = f"give --identity FILE, ${IDENTITY_ENV} or [encryption] identity_file"


@dataclass
class Keys:
    """The identities found (maybe none) and where they came from, for messages."""

    identities: list[Any] = field(default_factory=list)
    where: str | None = None

    @property
    def fingerprints(self) -> set[str]:
        return {fingerprint(str(i.to_public())) for i in self.identities}


def identity_path(config: Config, job: str | None, explicit: str | None) -> tuple[Path, str] | None:
    if explicit:
        return Path(explicit), f"--identity {explicit}"
    env = os.environ.get(IDENTITY_ENV)
    if env:
        return Path(env), f"${IDENTITY_ENV} ({env})"
    enc = config.encryption_for(job)
    if enc is not None and enc.identity_file is not None:
        return enc.identity_file, f"identity_file {enc.identity_file}"
    return None


def load_keys(config: Config, job: str | None, explicit: str | None, step: str) -> Keys:
    """The identity for `job`, or no keys when none is configured; an unreadable or invalid file is an error."""
    found = identity_path(config, job, explicit)
    if found is None:
        return Keys()
    path, where = found
    try:
        return Keys(load_identities(path), where)
    except OSError as exc:
        raise BackupdError(f"{step}: age identity {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BackupdError(f"{step}: age identity {where}: {exc}") from None


def recipients_of(backup: StoredBackup) -> list[str]:
    """The fingerprints of the recipients a backup was encrypted to ([] when it is not encrypted)."""
    enc = backup.manifest.get("encryption")
    if isinstance(enc, dict) and enc.get("recipients"):
        return [str(r) for r in enc["recipients"]]
    out: list[str] = []
    for a in backup.manifest.get("artifacts", []):
        out += [r for r in a.get("recipients", []) if r not in out]
    return out


def is_encrypted(backup: StoredBackup) -> bool:
    return any(a.get("encrypted") for a in backup.manifest.get("artifacts", []))


def require_unlock(backup: StoredBackup, keys: Keys, step: str) -> str | None:
    """Refuse (one line) an encrypted backup the keys do not open; for one they do, the note saying so.

    The fingerprints tell at once whether the identity is one of the recipients; decrypting the start of
    every artifact proves it."""
    if not is_encrypted(backup):
        return None
    recips = recipients_of(backup)
    name = f"{backup.job}/{backup.backup_id}"
    listed = ", ".join(recips) or "unknown"
    if not keys.identities:
        raise BackupdError(f"{step}: backup {name} is encrypted for recipients {listed}: {HOW}")
    mine = keys.fingerprints
    if recips and not mine & set(recips):
        raise BackupdError(
            f"{step}: backup {name} is encrypted for recipients {listed}; the identity from {keys.where}"
            f" ({', '.join(sorted(mine))}) is none of them"
        )
    for a in backup.manifest.get("artifacts", []):
        path = backup.path / a["file"]
        if a.get("encrypted") and path.is_file() and not can_decrypt(path, keys.identities):
            raise BackupdError(
                f"{step}: backup {name}: {a['file']} cannot be decrypted with the identity from {keys.where}"
                f" (recipients {listed})"
            )
    used = sorted(mine & set(recips))
    return f"decryption proven: age identity from {keys.where} (recipient {', '.join(used)})"
