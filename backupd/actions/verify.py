"""`backupd verify`: re-prove stored backups, and the scheduled re-verification that keeps every kept backup
proven (docs/restore-and-drills.md).

Each backup's verdict is recorded in the store (`verification.json`, beside the manifest and its S3 copy)
and in the catalog's `verifications` log, one backup at a time, so an interrupted verification resumes where
it stopped: the scheduled one takes the least recently verified backups first. It never works on a job whose
run is going (the run's lock is held): those backups are skipped this time, said so, and come first next time.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from backupd.actions.keys import Keys, load_keys
from backupd.engine.crypto import unlocking
from backupd.errors import BackupdError
from backupd.logs import EventLog
from backupd.notify import report
from backupd.settings import Config
from backupd.store.backups import MANIFEST, BrokenBackup, Store, StoredBackup, reading
from backupd.store.catalog import Catalog, now_iso
from backupd.store.locks import job_running
from backupd.store.s3 import Bucket, copy_record, error_text
from backupd.store.verify import backup_level, verify_backup


@dataclass
class Verified:
    """One backup (or copy) checked: what a report line and `--json` say."""

    job: str
    backup_id: str
    ok: bool
    copy: str = "local"
    level: str = "full"
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None

    @property
    def problems(self) -> list[str]:
        return [f"{a['artifact']}: {p}" for a in self.artifacts for p in a["problems"]]


def last_verified(backup: StoredBackup, copy: str = "local") -> str:
    """When this copy was last proven (its commit counts as the first proof); "" sorts first."""
    entry = backup.verdict.get(copy, {})
    return str(entry.get("read_at" if copy == "s3" else "at") or backup.manifest.get("finished_at") or "")


def _least_recently_proven(backup: StoredBackup) -> tuple[str, bool]:
    """The scheduled order: the oldest proof first; at the same second (times have one-second resolution),
    a backup proven only by its commit before one already re-verified."""
    return last_verified(backup), "at" in backup.verdict.get("local", {})


class Verifier:
    """Verifies backups, records every verdict in the store and the catalog, mirrors it beside the S3 copy."""

    def __init__(self, config: Config, catalog: Catalog, identity: str | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.identity = identity  # --identity FILE: also decrypt encrypted backups (level "full")
        self._keys: dict[str, Keys] = {}
        self.store = Store(config.store_root)
        self._bucket: Bucket | None = None
        self.warnings: list[str] = []

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = Bucket(self.config.settings.s3)
        return self._bucket

    def broken(self, item: BrokenBackup) -> Verified:
        """An unreadable manifest is a failed verification, never skipped."""
        self.catalog.set_verified(item.job, item.backup_id, False)
        self.catalog.add_verification(item.job, item.backup_id, "local", "full", False, item.reason)
        problem = {"artifact": MANIFEST, "ok": False, "problems": [item.reason]}
        return Verified(item.job, item.backup_id, False, artifacts=[problem])

    def local(self, backup: StoredBackup) -> Verified | None:
        """sha256 and format check of every artifact; None when it was pruned while we got to it."""
        keys = self.keys(backup.job)
        try:
            with reading(backup), unlocking(keys.identities):  # a prune meanwhile keeps it
                arts = verify_backup(backup)
        except BackupdError:
            return None
        ok = all(a["ok"] for a in arts)
        level = backup_level(arts)
        result = Verified(backup.job, backup.backup_id, ok, level=level, artifacts=arts)
        self.store.record_verdict(backup, "local", ok, level, result.problems)
        self.catalog.set_verified(backup.job, backup.backup_id, ok)
        self.catalog.add_verification(backup.job, backup.backup_id, "local", level, ok, _first(result.problems))
        self.mirror(backup)
        return result

    def keys(self, job: str) -> Keys:
        """The job's identity, if any is configured (an unusable one is a warning: checksum+header only)."""
        if job not in self._keys:
            try:
                self._keys[job] = load_keys(self.config, job, self.identity, "verify")
            except BackupdError as exc:
                self.warnings.append(str(exc))
                self._keys[job] = Keys()
        return self._keys[job]

    def s3_read(self, backup: StoredBackup) -> Verified:
        """Download every object of the backup's S3 copy and re-hash it against the manifest."""
        problems: list[str] = []
        versions = self.versions(backup)
        for art in backup.manifest.get("artifacts", []):
            key = self.bucket.key(backup.job, backup.backup_id, art["file"])
            try:
                size, digest = self.bucket.read_digest(key, versions.get(art["file"]))
            except Exception as exc:  # a missing object, or the bucket unreachable: one line
                problems.append(f"{art['file']}: {error_text(exc)}")
                continue
            if size != int(art["bytes"]):
                problems.append(f"{art['file']}: size {size} in S3 != manifest {art['bytes']}")
            elif digest != art["sha256"]:
                problems.append(f"{art['file']}: sha256 of the S3 copy differs from the manifest")
        ok = not problems
        self.store.record_verdict(backup, "s3", ok, "read", problems, read_at=now_iso())
        self.catalog.add_verification(backup.job, backup.backup_id, "s3", "read", ok, _first(problems))
        if not ok:
            self.catalog.set_s3_state(backup.job, backup.backup_id, "failed", error=problems[0])
        self.mirror(backup)
        arts = [{"artifact": p.split(":", 1)[0], "ok": False, "problems": [p.split(": ", 1)[-1]]} for p in problems]
        return Verified(backup.job, backup.backup_id, ok, copy="s3", level="read", artifacts=arts)

    def versions(self, backup: StoredBackup) -> dict[str, str]:
        """The VersionId of each object of the backup's copy (recorded at upload): what reads must name, so a
        later PUT under the same key never stands in for the backup. Empty on an unversioned bucket."""
        row = self.catalog.backup(backup.job, backup.backup_id)
        record = copy_record(row["s3_copy"] if row is not None else None, backup.verdict)
        return dict(record.get("versions") or {})

    def mirror(self, backup: StoredBackup) -> None:
        """Put the verdict beside the backup's S3 copy, so a rebuild from the bucket keeps it; a failure is a
        warning (the local verdict stands, and the next verify or copy tries again)."""
        row = self.catalog.backup(backup.job, backup.backup_id)
        if not self.config.settings.s3.enabled or row is None or row["s3_state"] != "copied":
            return
        try:
            self.bucket.put_verdict(backup)
        except Exception as exc:  # boto3/botocore errors: one line, never a failed verify
            self.warnings.append(f"verify {backup.job}/{backup.backup_id}: verdict not copied to S3: {error_text(exc)}")


def _first(problems: list[str]) -> str | None:
    return problems[0] if problems else None


def verify_targets(config: Config, verifier: Verifier, targets: list[StoredBackup],
                   broken: list[BrokenBackup]) -> list[Verified]:
    """`backupd verify [JOB|ID ...]`: every named backup, in the order given."""
    out = [verifier.broken(k) for k in broken]
    for b in targets:
        result = verifier.local(b)
        if result is not None:
            out.append(result)
    return out


def scheduled(config: Config, verifier: Verifier, jobs: list[str]) -> list[Verified]:
    """The scheduled re-verification of `jobs`: every committed backup, least recently verified first, one at
    a time; then, with S3 on, a full download and re-hash of the least recently read copies, up to
    `[s3] verify_read_fraction` of the copies' bytes (`verify --s3` checks every copy's metadata)."""
    store = verifier.store
    out: list[Verified] = []
    todo: list[StoredBackup] = []
    for job in jobs:
        out += [verifier.broken(k) for k in store.broken(job)]
        todo += store.backups(job)
    for b in sorted(todo, key=_least_recently_proven):
        if job_running(config.state_dir, b.job):
            out.append(Verified(b.job, b.backup_id, True, skipped="the job is running; verified next time"))
            continue
        result = verifier.local(b)
        if result is not None:
            out.append(result)
    s3 = config.settings.s3
    if s3.enabled and s3.verify_read_fraction > 0:
        out += _sample_s3(config, verifier, jobs, s3.verify_read_fraction)
    events = EventLog(config.settings.logging.format, stream=sys.stderr, level="warning")
    for job in jobs:  # after the verdicts are recorded: a notification can neither change nor hold them up
        bad = [(r.backup_id, r.copy, _first(r.problems) or "bad") for r in out if r.job == job and not r.ok]
        for backup_id, copy, problem in bad:
            events.event("warning", job=job, backup_id=backup_id, step="verify", error=f"{copy} copy: {problem}")
        if job in config.jobs:
            report.verify_finished(config, verifier.catalog, events, job, bad)
    return out


def _sample_s3(config: Config, verifier: Verifier, jobs: list[str], fraction: float) -> list[Verified]:
    copied: list[StoredBackup] = []
    for job in jobs:
        rows = {r["backup_id"]: r for r in verifier.catalog.s3_rows(job)}
        copied += [b for b in verifier.store.backups(job) if rows.get(b.backup_id, {}) and
                   rows[b.backup_id]["s3_state"] == "copied"]
    if not copied:
        return []
    budget = fraction * sum(b.size for b in copied)
    out: list[Verified] = []
    read = 0
    for b in sorted(copied, key=lambda b: last_verified(b, "s3")):
        if read >= budget and out:
            break
        if job_running(config.state_dir, b.job):
            continue
        out.append(verifier.s3_read(b))
        read += b.size
    return out


def read_cycles(fraction: float) -> int | None:
    """How many scheduled verifications it takes to have read every S3 copy once (None: never)."""
    return math.ceil(1 / fraction) if fraction > 0 else None
