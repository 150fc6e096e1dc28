"""SQLite catalog of runs (failed ones too), backups, artifacts and drills.

The store's manifests are the source of truth; the catalog is an index that `backupd catalog rebuild`
recreates from them. WAL mode lets the daemon, `status` and a running job read and write at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd.fsutil import FILE_MODE, ensure_private_dir
from backupd.store.backups import Store, StoredBackup

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    backup_id TEXT,
    trigger TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL,          -- running | ok | failed
    error TEXT,
    step TEXT,
    bytes INTEGER,
    duration REAL,
    pid INTEGER
);
CREATE INDEX IF NOT EXISTS runs_job ON runs(job, started_at);
CREATE TABLE IF NOT EXISTS backups (
    job TEXT NOT NULL,
    backup_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    verified INTEGER NOT NULL,
    verified_at TEXT,
    s3_state TEXT NOT NULL DEFAULT 'none',   -- none | pending | copied | failed | pruned
    s3_checked_at TEXT,
    s3_error TEXT,
    deleted_at TEXT,
    delete_reason TEXT,
    manifest TEXT NOT NULL,
    PRIMARY KEY (job, backup_id)
);
CREATE TABLE IF NOT EXISTS artifacts (
    job TEXT NOT NULL,
    backup_id TEXT NOT NULL,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    format TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    ok INTEGER NOT NULL,
    PRIMARY KEY (job, backup_id, name)
);
CREATE TABLE IF NOT EXISTS drills (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    backup_id TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL,          -- running | ok | failed
    checks TEXT,
    restore_seconds REAL,
    error TEXT,
    notes TEXT                      -- JSON list: what the drill could not prove
);
CREATE INDEX IF NOT EXISTS drills_job ON drills(job, started_at);
CREATE TABLE IF NOT EXISTS verifications (  -- every re-verification; the verdict itself lives in the store
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    backup_id TEXT NOT NULL,
    copy TEXT NOT NULL,             -- local | s3
    at TEXT NOT NULL,
    level TEXT NOT NULL,            -- full (sha256 + format) | read (S3 download + sha256) | head (S3 checksums)
    ok INTEGER NOT NULL,
    problem TEXT
);
CREATE INDEX IF NOT EXISTS verifications_job ON verifications(job, at);
CREATE TABLE IF NOT EXISTS notify_state (   -- a reported state (failing, overdue, ...) of a job or the store
    job TEXT NOT NULL,              -- '' for states of no one job
    kind TEXT NOT NULL,             -- failure | overdue | drill_failure | s3_failure | s3_lag | low_space | ...
    since TEXT NOT NULL,
    last_sent TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (job, kind)
);
CREATE TABLE IF NOT EXISTS outbox (         -- messages a channel did not take yet; never the channel's URL
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,          -- kind:fingerprint, e.g. webhook:3f2a9c01b7d4
    job TEXT,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,          -- the message as JSON
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    last_error TEXT,
    state TEXT NOT NULL DEFAULT 'pending'   -- pending | sent | undeliverable
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
"""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Catalog:
    def __init__(self, state_dir: Path) -> None:
        ensure_private_dir(state_dir)
        self.path = state_dir / "catalog.sqlite"
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=30000")
        # Jobs the daemon starts together open a fresh catalog at the same instant: switching to WAL and
        # creating or migrating the schema are not safe to race (SQLite answers "database is locked" or
        # "duplicate column" without waiting), so the set-up is serialized by a lock on a side file.
        lock_fd = os.open(state_dir / "catalog.lock", os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self._migrate()
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.chmod(side, FILE_MODE)
        finally:
            os.close(lock_fd)

    def _migrate(self) -> None:
        """Columns added after the first release (catalogs created earlier get them on open)."""
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(backups)")}
        if "s3_checksums" not in have:  # JSON {file: checksum S3 reported when the copy was checked}
            self.db.execute("ALTER TABLE backups ADD COLUMN s3_checksums TEXT")
        if "s3_copy" not in have:  # JSON {"versions": {file: VersionId}, "lock": {"mode", "until"} | null}
            self.db.execute("ALTER TABLE backups ADD COLUMN s3_copy TEXT")
        if "notes" not in {r["name"] for r in self.db.execute("PRAGMA table_info(drills)")}:
            self.db.execute("ALTER TABLE drills ADD COLUMN notes TEXT")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ runs

    def start_run(self, job: str, trigger: str) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (job, trigger, started_at, outcome, pid) VALUES (?, ?, ?, 'running', ?)",
            (job, trigger, now_iso(), os.getpid()),
        )
        return int(cur.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        *,
        backup_id: str | None = None,
        error: str | None = None,
        step: str | None = None,
        nbytes: int | None = None,
        duration: float | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE runs SET finished_at=?, outcome=?, backup_id=?, error=?, step=?, bytes=?, duration=?"
            " WHERE id=?",
            (now_iso(), outcome, backup_id, error, step, nbytes, duration, run_id),
        )

    def mark_abandoned_runs(self, job: str) -> None:
        """Runs left 'running' by a killed process (we hold the job lock, so none is alive)."""
        self.db.execute(
            "UPDATE runs SET outcome='failed', error='run was killed (no result recorded)', finished_at=?"
            " WHERE job=? AND outcome='running'",
            (now_iso(), job),
        )

    def last_run(self, job: str) -> sqlite3.Row | None:
        q = "SELECT * FROM runs WHERE job=? AND outcome != 'running' ORDER BY id DESC LIMIT 1"
        row: sqlite3.Row | None = self.db.execute(q, (job,)).fetchone()
        return row

    def last_success(self, job: str) -> sqlite3.Row | None:
        q = "SELECT * FROM runs WHERE job=? AND outcome='ok' ORDER BY id DESC LIMIT 1"
        row: sqlite3.Row | None = self.db.execute(q, (job,)).fetchone()
        return row

    # ------------------------------------------------------------ backups

    def record_backup(self, backup: StoredBackup, s3_state: str = "none") -> None:
        m = backup.manifest
        arts = m.get("artifacts", [])
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO backups (job, backup_id, started_at, finished_at, path, bytes,"
                " raw_bytes, verified, verified_at, s3_state, manifest, s3_copy)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE((SELECT s3_state FROM backups WHERE job=? AND"
                " backup_id=?), ?), ?, COALESCE(?, (SELECT s3_copy FROM backups WHERE job=? AND backup_id=?)))",
                (
                    backup.job,
                    backup.backup_id,
                    m.get("started_at", ""),
                    m.get("finished_at"),
                    str(backup.path),
                    sum(int(a.get("bytes", 0)) for a in arts),
                    sum(int(a.get("raw_bytes", 0)) for a in arts),
                    1 if backup.verified else 0,
                    backup.verdict.get("local", {}).get("at") or m.get("finished_at"),
                    backup.job,
                    backup.backup_id,
                    s3_state,
                    json.dumps(m, sort_keys=True),
                    _copy_of(backup.verdict),
                    backup.job,
                    backup.backup_id,
                ),
            )
            db.execute("DELETE FROM artifacts WHERE job=? AND backup_id=?", (backup.job, backup.backup_id))
            for a in arts:
                db.execute(
                    "INSERT INTO artifacts (job, backup_id, name, file, format, bytes, raw_bytes, sha256, ok)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        backup.job,
                        backup.backup_id,
                        a["name"],
                        a["file"],
                        a["format"],
                        a["bytes"],
                        a["raw_bytes"],
                        a["sha256"],
                        1 if a.get("verification", {}).get("ok") else 0,
                    ),
                )

    def backups(self, job: str | None = None, include_deleted: bool = False) -> list[sqlite3.Row]:
        q = "SELECT * FROM backups WHERE 1=1"
        args: list[Any] = []
        if job:
            q += " AND job=?"
            args.append(job)
        if not include_deleted:
            q += " AND deleted_at IS NULL"
        q += " ORDER BY job, backup_id"
        return list(self.db.execute(q, args))

    def backup(self, job: str, backup_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM backups WHERE job=? AND backup_id=?", (job, backup_id)
        ).fetchone()
        return row

    def set_verified(self, job: str, backup_id: str, ok: bool) -> None:
        self.db.execute(
            "UPDATE backups SET verified=?, verified_at=? WHERE job=? AND backup_id=?",
            (1 if ok else 0, now_iso(), job, backup_id),
        )

    def set_s3_state(self, job: str, backup_id: str, state: str, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE backups SET s3_state=?, s3_checked_at=?, s3_error=? WHERE job=? AND backup_id=?",
            (state, now_iso(), error, job, backup_id),
        )

    def set_s3_copied(
        self, job: str, backup_id: str, checksums: dict[str, str], copy: dict[str, Any] | None = None
    ) -> None:
        """The copy was uploaded and checked: remember what S3 reported and, from a versioned bucket, the
        VersionId of each object and its Object Lock (`copy`), to read and re-check those versions later."""
        self.db.execute(
            "UPDATE backups SET s3_state='copied', s3_checked_at=?, s3_error=NULL, s3_checksums=?,"
            " s3_copy=COALESCE(?, s3_copy) WHERE job=? AND backup_id=?",
            (now_iso(), json.dumps(checksums, sort_keys=True), json.dumps(copy, sort_keys=True) if copy else None,
             job, backup_id),
        )

    def retention_rows(self, job: str) -> dict[str, tuple[bool, str]]:
        """backup_id -> (verified, s3_state) for every row of a job; no manifests, so 100k rows stay fast."""
        q = "SELECT backup_id, verified, s3_state FROM backups WHERE job=?"
        return {r[0]: (bool(r[1]), r[2]) for r in self.db.execute(q, (job,))}

    def s3_rows(self, job: str | None = None) -> list[sqlite3.Row]:
        """Rows with a copy in S3 or one owed to it (locally deleted ones included)."""
        q = "SELECT * FROM backups WHERE s3_state IN ('pending', 'copied', 'failed')"
        args: list[Any] = []
        if job:
            q += " AND job=?"
            args.append(job)
        return list(self.db.execute(q + " ORDER BY job, backup_id", args))

    def mark_missing_deleted(self, job: str, present: set[str], reason: str) -> int:
        """Rows whose directory is gone (a prune killed between rename and catalog update) become deleted."""
        gone = [
            r[0]
            for r in self.db.execute("SELECT backup_id FROM backups WHERE job=? AND deleted_at IS NULL", (job,))
            if r[0] not in present
        ]
        with self.tx() as db:
            db.executemany(
                "UPDATE backups SET deleted_at=?, delete_reason=? WHERE job=? AND backup_id=?",
                [(now_iso(), reason, job, b) for b in gone],
            )
        return len(gone)

    def mark_deleted(self, job: str, backup_id: str, reason: str) -> None:
        self.db.execute(
            "UPDATE backups SET deleted_at=?, delete_reason=? WHERE job=? AND backup_id=?",
            (now_iso(), reason, job, backup_id),
        )

    # ------------------------------------------------------------ drills

    def start_drill(self, job: str, backup_id: str | None) -> int:
        cur = self.db.execute(
            "INSERT INTO drills (job, backup_id, started_at, outcome) VALUES (?, ?, ?, 'running')",
            (job, backup_id, now_iso()),
        )
        return int(cur.lastrowid or 0)

    def finish_drill(
        self,
        drill_id: int,
        outcome: str,
        checks: list[dict[str, Any]] | None = None,
        restore_seconds: float | None = None,
        error: str | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE drills SET finished_at=?, outcome=?, checks=?, restore_seconds=?, error=?, notes=? WHERE id=?",
            (now_iso(), outcome, json.dumps(checks or []), restore_seconds, error, json.dumps(notes or []), drill_id),
        )

    def last_drill(self, job: str, backup_id: str | None = None) -> sqlite3.Row | None:
        q = "SELECT * FROM drills WHERE job=? AND outcome != 'running'"
        args: list[Any] = [job]
        if backup_id:
            q += " AND backup_id=?"
            args.append(backup_id)
        row: sqlite3.Row | None = self.db.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return row

    def drilled_at(self, job: str) -> dict[str, str]:
        """When each backup of `job` was last drilled (any outcome): what rotating drills pick by."""
        q = "SELECT backup_id, MAX(started_at) FROM drills WHERE job=? AND backup_id IS NOT NULL GROUP BY backup_id"
        return {r[0]: r[1] for r in self.db.execute(q, (job,))}

    # ------------------------------------------------------------ notification state and outbox

    def notify_state(self, job: str, kind: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM notify_state WHERE job=? AND kind=?", (job, kind)
        ).fetchone()
        return row

    def set_notify_state(self, job: str, kind: str, *, sent: bool, detail: str | None = None) -> None:
        """Enter (or stay in) a state; `sent` moves its last_sent to now."""
        now = now_iso()
        self.db.execute(
            "INSERT INTO notify_state (job, kind, since, last_sent, detail) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(job, kind) DO UPDATE SET detail=excluded.detail,"
            " last_sent=CASE WHEN ? THEN excluded.last_sent ELSE last_sent END",
            (job, kind, now, now, detail, sent),
        )

    def clear_notify_state(self, job: str, kind: str) -> bool:
        """Leave a state; True when the job was in it."""
        cur = self.db.execute("DELETE FROM notify_state WHERE job=? AND kind=?", (job, kind))
        return cur.rowcount > 0

    def outbox_add(
        self, channel: str, job: str | None, event: str, payload: str, attempts: int, next_at: str, error: str
    ) -> int:
        cur = self.db.execute(
            "INSERT INTO outbox (channel, job, event, payload, created_at, attempts, next_at, last_error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (channel, job, event, payload, now_iso(), attempts, next_at, error),
        )
        return int(cur.lastrowid or 0)

    def outbox_due(self, now: str) -> list[sqlite3.Row]:
        return list(
            self.db.execute("SELECT * FROM outbox WHERE state='pending' AND next_at<=? ORDER BY id", (now,))
        )

    def outbox_update(
        self, entry_id: int, state: str, attempts: int, next_at: str | None = None, error: str | None = None
    ) -> None:
        self.db.execute(
            "UPDATE outbox SET state=?, attempts=?, next_at=COALESCE(?, next_at), last_error=? WHERE id=?",
            (state, attempts, next_at, error, entry_id),
        )

    def outbox_delete(self, entry_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id=?", (entry_id,))

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """(channel kind, state) -> count of messages, for metrics and status."""
        out: dict[tuple[str, str], int] = {}
        for r in self.db.execute("SELECT channel, state, COUNT(*) FROM outbox GROUP BY channel, state"):
            key = (str(r[0]).split(":", 1)[0], str(r[1]))
            out[key] = out.get(key, 0) + int(r[2])
        return out

    def outbox_undeliverable(self, limit: int = 20) -> list[sqlite3.Row]:
        return list(
            self.db.execute("SELECT * FROM outbox WHERE state='undeliverable' ORDER BY id DESC LIMIT ?", (limit,))
        )

    # ------------------------------------------------------------ rebuild

    def add_verification(self, job: str, backup_id: str, copy: str, level: str, ok: bool, problem: str | None) -> None:
        self.db.execute(
            "INSERT INTO verifications (job, backup_id, copy, at, level, ok, problem) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job, backup_id, copy, now_iso(), level, 1 if ok else 0, problem),
        )

    def verification_summary(self, job: str) -> dict[str, Any]:
        """For status and metrics: the last good re-verification, failures per copy, and the oldest time any
        kept backup was last proven (its commit counts as its first proof)."""
        last_ok = self.db.execute(
            "SELECT MAX(at) FROM verifications WHERE job=? AND ok=1 AND copy='local'", (job,)
        ).fetchone()[0]
        q = "SELECT copy, COUNT(*) FROM verifications WHERE job=? AND ok=0 GROUP BY copy"
        failures = {r[0]: int(r[1]) for r in self.db.execute(q, (job,))}
        oldest = self.db.execute(
            "SELECT MIN(COALESCE((SELECT MAX(v.at) FROM verifications v WHERE v.job=b.job AND v.backup_id=b.backup_id"
            " AND v.copy='local' AND v.ok=1), b.finished_at)) FROM backups b WHERE b.job=? AND b.deleted_at IS NULL",
            (job,),
        ).fetchone()[0]
        return {"last_ok": last_ok, "failures": failures, "oldest_proven": oldest}

    def reconcile(self, store: Store, job: str, s3_enabled: bool) -> list[str]:
        """Give every committed backup of `job` that has no row its row, queued for S3 when S3 is on.

        A run renames its backup into place before it writes the row; a failure between the two (a full
        disk under the state dir, a kill) leaves a good backup that retention and S3 would not know about.
        Reconciling only adds rows, never deletes anything. Returns the backup ids it added."""
        known = {r["backup_id"] for r in self.db.execute("SELECT backup_id FROM backups WHERE job=?", (job,))}
        added = []
        for backup in store.backups(job):
            if backup.backup_id not in known:
                self.record_backup(backup, s3_state="pending" if s3_enabled else "none")
                added.append(backup.backup_id)
        return added

    def rebuild(self, store: Store) -> int:
        """Recreate backups and artifacts from the manifests on disk; runs and drills are kept."""
        keep_s3 = {
            (r["job"], r["backup_id"]): r["s3_state"] for r in self.db.execute("SELECT * FROM backups")
        }
        keep_sums = {
            (r["job"], r["backup_id"]): (r["s3_checksums"], r["s3_copy"])
            for r in self.db.execute("SELECT job, backup_id, s3_checksums, s3_copy FROM backups")
        }
        with self.tx() as db:
            db.execute("DELETE FROM artifacts")
            db.execute("DELETE FROM backups")
        n = 0
        for job in store.jobs():
            for b in store.backups(job):
                self.record_backup(b, s3_state=keep_s3.get((job, b.backup_id), "none"))
                sums, copy = keep_sums.get((job, b.backup_id), (None, None))
                if sums or copy:  # the store's record of the copy (read by record_backup) comes first
                    self.db.execute(
                        "UPDATE backups SET s3_checksums=COALESCE(?, s3_checksums), s3_copy=COALESCE(s3_copy, ?)"
                        " WHERE job=? AND backup_id=?",
                        (sums, copy, job, b.backup_id),
                    )
                n += 1
        return n


def _copy_of(verdict: dict[str, Any]) -> str | None:
    """The S3 copy's record kept in a backup's verification record (the store's truth), as the catalog's
    JSON; None when the store holds none (then the catalog keeps what it had)."""
    s3 = verdict.get("s3") if isinstance(verdict, dict) else None
    if not isinstance(s3, dict) or not s3.get("versions"):
        return None
    return json.dumps({"versions": s3["versions"], "lock": s3.get("lock")}, sort_keys=True)
