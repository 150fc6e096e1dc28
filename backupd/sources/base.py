"""The Source interface: everything backupd does with one kind of database, behind one class.

A source owns its config model, `check_reachable`, `dump` (artifacts through `DumpContext.writing`),
`restore` (with the CLI options it declares) and `drill` (restore into a scratch target, compare with the
stats recorded at dump time). The registry in `backupd.sources` is the only list of sources; nothing outside
`backupd/sources/` asks which type a job is (docs/architecture.md).
"""

from __future__ import annotations

import abc
import builtins
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from backupd.engine.pipeline import ArtifactResult, ArtifactWriter
from backupd.errors import StepError, UsageError
from backupd.formats.base import FormatChecker
from backupd.logs import ByteProgress, EventLog
from backupd.settings import CompressionCfg, JobBase, Strict, read_secret
from backupd.store.backups import StoredBackup
from backupd.store.segments import Segment, SegmentStore

Progress = Callable[[int], None]
J = TypeVar("J", bound=JobBase)
PASSWORD_ENV = "BACKUPD_RESTORE_PASSWORD_FILE"  # noqa: S105 (names a file, holds no secret)
DRILL_PASSWORD_ENV = "BACKUPD_DRILL_PASSWORD_FILE"  # noqa: S105 (names a file, holds no secret)


def no_progress(n: int) -> None:
    """Default progress callback: nothing to show off a TTY."""


# ------------------------------------------------------------------ dump


class MirrorKeys(Strict):
    """The key of a job whose source keeps a staging mirror of its data on the backup machine between runs
    (files, wordpress, redis: rsync's delta transfer needs the previous copy). The mirror is plaintext
    even when the backups are encrypted; `keep_staging = false` removes it after every run, success or
    failure, at the cost of a full transfer next time (docs/security.md)."""

    keep_staging: bool = True



@dataclass
class DumpContext:
    """What a source needs from the run: where to write, where to stage, how to report."""

    job_name: str
    job: JobBase
    partial_dir: Path
    staging_dir: Path
    tmp_dir: Path
    compression: CompressionCfg
    events: EventLog
    progress: ByteProgress
    artifacts: list[ArtifactResult] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # go into the manifest; `show` and `status` show them
    recipients: list[str] = field(default_factory=list)  # age public keys every artifact is encrypted to

    def warn(self, message: str, **fields: Any) -> None:
        """Something an operator must know about a good backup (content it does not hold, say)."""
        self.warnings.append(message)
        self.events.event("warning", message=message, **fields)

    def _open_artifact(self, name: str, fmt: str, ext: str, checker: FormatChecker | None) -> ArtifactWriter:
        """The raw writer behind `writing()`, which also aborts, closes, judges and registers it."""
        task = self.progress.task(f"{self.job_name}: {name}")
        return ArtifactWriter(
            self.partial_dir,
            name,
            fmt,
            ext,
            algorithm=self.compression.algorithm,
            level=self.compression.level,
            checker=checker,
            on_progress=task.advance,
            recipients=self.recipients,
        )

    @contextmanager
    def writing(
        self,
        name: str,
        fmt: str,
        ext: str,
        checker: FormatChecker | None,
        *,
        label: str | None = None,
        host: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Iterator[ArtifactWriter]:
        """Open an artifact, let the caller stream into it, then close, verify and register it.

        Any exception in the block aborts the artifact (its file is removed); a format check that failed
        raises StepError("verify", ...) naming `label` (default: the file) after the artifact is registered, so
        the run's events show what was read. `extra` goes into the artifact's manifest entry (e.g. the database).
        This is the one way sources write artifacts.
        """
        writer = self._open_artifact(name, fmt, ext, checker)
        try:
            yield writer
            result = writer.close()
        except BaseException:  # the block failed, or the close did (ENOSPC): no half-written file stays
            writer.abort()
            raise
        result.extra.update(extra or {})
        self.add(result)
        if not result.ok:
            assert result.check is not None
            raise StepError("verify", f"{label or result.file}: {result.check.errors[0]}", host=host)

    def add(self, result: ArtifactResult) -> ArtifactResult:
        self.artifacts.append(result)
        self.events.event(
            "artifact",
            step="dump",
            artifact=result.file,
            bytes=result.bytes,
            raw_bytes=result.raw_bytes,
            duration=round(result.seconds, 3),
            outcome="ok" if result.ok else "invalid",
        )
        return result

    @property
    def last(self) -> ArtifactResult:
        """The artifact `writing()` registered last (for facts a source copies into the manifest)."""
        return self.artifacts[-1]


# ------------------------------------------------------------------ restore


@dataclass(frozen=True)
class RestoreOption:
    """A `backupd restore` option a source takes; the CLI offers the union over the registry."""

    flag: str  # "--files-to"
    dest: str  # "files_to"
    help: str
    metavar: str | None = None
    action: str = "store"  # "store" | "store_true" | "append"

    @property
    def default(self) -> Any:
        return {"store_true": False, "append": []}.get(self.action)


@dataclass
class RestoreRequest:
    """`backupd restore JOB ...`: the common options, plus the source-specific ones by `dest`."""

    job: str
    backup_id: str | None
    to: str | None
    yes: bool
    options: dict[str, Any] = field(default_factory=dict)
    identity: str | None = None  # --identity FILE: the age private key of an encrypted backup

    def option(self, dest: str, default: Any = None) -> Any:
        return self.options.get(dest, default)

    def password(self) -> str | None:
        """The target's password: `--password-file`, else $BACKUPD_RESTORE_PASSWORD_FILE, else none."""
        path = self.option("password_file") or os.environ.get(PASSWORD_ENV)
        if not path:
            return None
        try:
            return read_secret(Path(path))
        except OSError as exc:
            raise UsageError(f"restore: password file {path}: {exc.strerror or exc}") from None


@dataclass
class Restored:
    """One artifact restored: where to, and how much (for the summary line)."""

    artifact: str
    target: str
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def artifacts(backup: StoredBackup, fmt: str) -> list[dict[str, Any]]:
    """The manifest entries of one format, in dump order."""
    return [a for a in backup.manifest.get("artifacts", []) if a.get("format") == fmt]


# ------------------------------------------------------------------ drill


@dataclass
class Check:
    check: str
    expected: Any
    actual: Any
    ok: bool


def compare(name: str, expected: Any, actual: Any) -> Check:
    return Check(name, expected, actual, expected == actual)


@dataclass
class DrillContext:
    """What a drill gets from the orchestrator: an ExitStack for everything it starts (servers, databases to
    drop; unwound however the drill ends) and a private work directory removed afterwards."""

    stack: ExitStack
    work: Path
    notes: list[str] = field(default_factory=list)
    # a drill that uses another backup than the one it was started for (the PITR drill's older base, the
    # random instant's base) passes it here first: held against a prune for the drill and re-verified
    hold: Callable[[StoredBackup], None] = field(default=lambda backup: None)


@dataclass
class DrillResult:
    checks: list[Check]
    restore_seconds: float


def drill_password(job_password_file: Path | None) -> str | None:
    """The drill target's password: $BACKUPD_DRILL_PASSWORD_FILE, else the job's own password file."""
    env = os.environ.get(DRILL_PASSWORD_ENV)
    if env:
        return read_secret(Path(env))
    return read_secret(job_password_file)


# ------------------------------------------------------------------ the interface


class Source(abc.ABC, Generic[J]):
    """One job type. Subclasses set `type` (the config's `type = "..."`) and `model` (its job model, `J`)."""

    type: ClassVar[str]
    model: ClassVar[builtins.type[JobBase]]  # == J; ClassVar cannot hold a type variable
    restore_options: ClassVar[tuple[RestoreOption, ...]] = ()

    @abc.abstractmethod
    def check_reachable(self, job: J) -> list[str]:
        """`check-config --connect`: prove every host the job needs answers; one detail line each.

        Raises StepError (naming host and step) at the first that does not."""

    @abc.abstractmethod
    def dump(self, job: J, ctx: DumpContext) -> dict[str, Any]:
        """Write the backup's artifacts through `ctx.writing()`; return the source facts for the manifest."""

    def check_restore(self, job: J, req: RestoreRequest) -> None:
        """Usage errors in a restore request, before any backup is picked (default: `--to` is required)."""
        if not req.to:
            raise UsageError(f"restore: a {self.type} job needs --to TARGET")

    def before_restore(self, job: J, backup: StoredBackup, req: RestoreRequest) -> None:
        """A last refusal once the backup is known, before it is verified and anything is written."""

    def keeps_staging(self, job: J) -> bool:
        """Whether the run leaves the job's staging dir in place for the next run (`keep_staging`; only the
        models of sources with a mirror have the key, the others' staging dirs stay empty)."""
        return job.keep_staging if isinstance(job, MirrorKeys) else True

    @abc.abstractmethod
    def restore(self, job: J, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        """Write the (already verified) backup to `req.to`; refuse non-empty targets unless `req.yes`."""

    @abc.abstractmethod
    def drill(self, job: J, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        """Restore the (verified) backup into a scratch target and compare it with the dump's stats."""


# ------------------------------------------------------------------ point-in-time recovery (a capability)


@dataclass
class StreamContext:
    """What `backupd stream JOB` (or the daemon's supervisor) gives a source's log stream."""

    job_name: str
    segments: SegmentStore
    state_dir: Path
    tmp_dir: Path
    compression: CompressionCfg
    events: EventLog
    stop: threading.Event  # set on SIGTERM: commit the open segment, then return
    recipients: list[str] = field(default_factory=list)  # age public keys segments are encrypted to
    on_gap: Callable[[str, dict[str, Any]], None] | None = None  # (reason, details): the `pitr_gap` notification
    on_commit: Callable[[Segment], None] | None = None  # after each commit (wakes the S3 shipper; must not block)


class PointInTime(abc.ABC, Generic[J]):
    """A capability a Source may also offer: continuous log archiving and restore to an instant (docs/pitr.md).

    Callers ask `isinstance(source, PointInTime)` and `pitr_enabled(job)`, never the job's type."""

    @abc.abstractmethod
    def pitr_enabled(self, job: J) -> bool:
        """The job has point-in-time recovery switched on (e.g. `[pitr] enabled = true`)."""

    def pitr_window(self, job: J) -> float:
        """Seconds back from now that must stay restorable (`[pitr] window`): what retention keeps."""
        return 7 * 86400.0

    @abc.abstractmethod
    def check_pitr(self, job: J) -> list[str]:
        """The server's side of PITR (log on, format, privileges, expiry): detail lines, warnings prefixed
        "warning: "; raises StepError naming host and step at the first thing that rules streaming out."""

    @abc.abstractmethod
    def stream(self, job: J, ctx: StreamContext) -> None:
        """Archive the log into `ctx.segments` until `ctx.stop` is set; resume where the last segment ended."""

    @abc.abstractmethod
    def restore_until(
        self, job: J, backups: list[StoredBackup], segments: SegmentStore, req: RestoreRequest, progress: Progress
    ) -> list[Restored]:
        """Restore the newest verified base before `req.option("until")` and replay segments up to it."""

    @abc.abstractmethod
    def pitr_drill(
        self, job: J, backups: list[StoredBackup], segments: SegmentStore, ctx: DrillContext
    ) -> DrillResult:
        """Restore base N, replay to base N+1's position and compare with N+1's stats (the chain proven)."""


# ------------------------------------------------------------------ restore options several sources take

PASSWORD_FILE_OPTION = RestoreOption(
    "--password-file", "password_file", "target password (default: $BACKUPD_RESTORE_PASSWORD_FILE)", "FILE"
)
DATABASE_OPTION = RestoreOption(
    "--database", "database", "restore only this database of a multi-database backup", "NAME"
)
FILES_TO_OPTION = RestoreOption(
    "--files-to", "files_to", "where a backup's files go (wordpress; files: same as --to)", "DIR"
)
UNTIL_OPTION = RestoreOption(
    "--until", "until",
    "restore to this point: an ISO 8601 time (to UTC), a binlog position FILE:POS or a GTID D-S-N (PITR jobs)",
    "TIME",
)
