"""Re-hash and re-check stored archives: what `backupd verify` and restores run before trusting a file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.engine.compression import iter_chunks, open_decompressed
from backupd.engine.crypto import DecryptionError, active_identities, can_decrypt
from backupd.engine.pipeline import sha256_file
from backupd.formats import agehdr
from backupd.formats.base import CheckResult
from backupd.formats.registry import SNIFF_BYTES, checker_for, sniff
from backupd.store.backups import StoredBackup


@dataclass
class FileCheck:
    path: Path
    format: str | None
    compression: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    result: CheckResult | None = None


def check_stream_file(path: Path, fmt: str | None = None) -> FileCheck:
    """Decompress (whatever the codec) and run the format's structural check over the whole stream."""
    try:
        algo, stream = open_decompressed(path)
    except OSError as exc:
        return FileCheck(path, fmt, "?", False, [f"{path}: {exc.strerror or exc}"])
    except DecryptionError as exc:
        return FileCheck(path, fmt, "?", False, [str(exc)])
    problems: list[str] = []
    result: CheckResult | None = None
    with stream:
        try:
            chunks = iter_chunks(stream)
            head = b""
            for chunk in chunks:
                head += chunk
                if len(head) >= SNIFF_BYTES:
                    break
            detected = sniff(head)
            if fmt is None:
                fmt = detected
            if fmt is None:
                return FileCheck(path, None, algo, False, ["unknown format (not a SQL dump, tar, RDB or archive)"])
            checker = checker_for(fmt)
            checker.feed(head)
            for chunk in chunks:
                checker.feed(chunk)
            result = checker.finish()
            problems.extend(result.errors)
        except DecryptionError as exc:  # damaged ciphertext: age's authentication fails
            problems.append(str(exc))
        except Exception as exc:  # a corrupt compressed stream raises from the decompressor
            problems.append(f"cannot decompress ({algo}): {exc}")
    return FileCheck(path, fmt, algo, not problems, problems, result)


def _plain(value: Any) -> Any:
    """As the manifest's JSON has it (tuples become lists, int keys become strings)."""
    return json.loads(json.dumps(value, default=str))


def integrity_problems(path: Path, art: dict[str, Any]) -> list[str]:
    """Size and sha256 of a stored file against its manifest entry: what proves the bytes were not altered."""
    if not path.is_file():
        return ["file missing"]
    problems = []
    size = path.stat().st_size
    if size != art["bytes"]:
        problems.append(f"size {size} != manifest {art['bytes']}")
    digest = sha256_file(path)
    if digest != art["sha256"]:
        problems.append(f"sha256 mismatch: file {digest[:16]}..., manifest {art['sha256'][:16]}...")
    return problems


def age_header_problems(path: Path, art: dict[str, Any]) -> list[str]:
    """What can be proven of an encrypted artifact without its key, besides its sha256: the age v1 header
    parses and names as many X25519 recipients as the manifest, and a payload follows it."""
    try:
        with path.open("rb") as fh:
            head = fh.read(agehdr.MAX_HEADER)
    except OSError as exc:
        return [f"{path}: {exc.strerror or exc}"]
    recipients = art.get("recipients")
    return agehdr.check(head, path.stat().st_size, len(recipients) if recipients else None)


LEVEL_FULL = "full"  # sha256 + decompress + the format's check (decrypted with an identity if encrypted)
LEVEL_HEADER = "checksum+header"  # an encrypted artifact without its key: sha256 + the age header


def backup_level(artifacts: list[dict[str, Any]]) -> str:
    """The level a verification of the whole backup reached: the lowest of its artifacts'."""
    return LEVEL_HEADER if any(a.get("level") == LEVEL_HEADER for a in artifacts) else LEVEL_FULL


def verify_backup(backup: StoredBackup) -> list[dict[str, Any]]:
    """Check every artifact against the manifest: size, sha256, then the format's own structure.

    An encrypted artifact is decrypted for the format check when the keyring holds an identity that opens
    it (level "full"); otherwise its ciphertext's sha256 and the age header are what is proven
    ("checksum+header")."""
    out = []
    for art in backup.manifest.get("artifacts", []):
        path = backup.path / art["file"]
        problems = integrity_problems(path, art)
        level = LEVEL_FULL
        if path.is_file() and art.get("encrypted"):
            problems.extend(age_header_problems(path, art))
            ids = active_identities()
            if not (ids and not problems and can_decrypt(path, ids)):
                level = LEVEL_HEADER
        if path.is_file() and level == LEVEL_FULL:
            fc = check_stream_file(path, art["format"])
            problems.extend(fc.problems)
            if fc.result is not None and fc.ok and art.get("stats") and _plain(fc.result.stats) != art["stats"]:
                problems.append("content stats differ from the manifest")
        out.append({"artifact": art["file"], "ok": not problems, "problems": problems, "level": level})
    return out
