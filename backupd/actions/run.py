"""One run of a job: lock, dump, pipeline, verify, commit, ship, prune, notify.

A scheduled run (the daemon spawns `backupd run JOB`) and a manual run take this same path. Whatever goes
wrong, the `.partial` directory is removed, the failure is recorded in the catalog, and the previous
backups are untouched.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupd import __version__
from backupd.engine.crypto import fingerprint
from backupd.engine.signals import Terminated, terminate_on_signals
from backupd.errors import BackupdError, StepError
from backupd.fsutil import ensure_private_dir
from backupd.logs import ByteProgress, EventLog
from backupd.notify import report
from backupd.notify.deliver import notify
from backupd.notify.message import Message
from backupd.settings import Config, JobBase
from backupd.sources import source_for
from backupd.sources.base import DumpContext
from backupd.store.backups import Store, StoredBackup
from backupd.store.catalog import Catalog
from backupd.store.locks import job_lock
from backupd.store.prune import prune_hook, s3_prune_hook
from backupd.store.s3_sync import copy_hook
from backupd.store.segment_ship import segment_copy_hook


@dataclass
class RunResult:
    job: str
    ok: bool
    backup_id: str | None
    error: str | None
    bytes: int
    duration: float
    path: Path | None = None
    step: str | None = None
    s3_error: str | None = None  # the backup is committed, its S3 copy failed


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_job(config: Config, name: str, trigger: str, events: EventLog, progress: bool = False) -> RunResult:
    """Run one job to completion; raises LockedError when it is already running, else returns a result.

    Every failure, an unexpected exception included, is recorded in the catalog when the catalog can be
    opened, emitted as a `failed` event and returned as a failed result, so `run --all` goes on with the
    other jobs. Only an interrupt (`Terminated`, KeyboardInterrupt) propagates, after being recorded.
    """
    job = config.job(name)
    t0 = time.monotonic()
    events.bind(job=name)
    try:
        state = ensure_private_dir(config.state_dir)
    except OSError as exc:  # no state dir: nothing can be recorded, but the failure is still said
        return _unrecorded(config, _failed(name, None, exc, "start", t0, events), events)
    with job_lock(state, name), terminate_on_signals():
        try:
            catalog = Catalog(state)
        except (OSError, sqlite3.Error, BackupdError) as exc:
            return _unrecorded(config, _failed(name, None, exc, "catalog", t0, events), events)
        try:
            report.run_started(config, catalog, events, name)
            result = _run_locked(config, name, job, trigger, events, progress, catalog)
            # the outcome is recorded: notifications now, which can neither change nor hold it up for long
            if result.ok and result.backup_id is not None:
                report.run_succeeded(config, catalog, events, name, result.backup_id, result.bytes, result.s3_error)
            elif not result.ok:
                report.run_failed(config, catalog, events, name, result.step, result.error or "failed")
            return result
        finally:
            catalog.close()


def _unrecorded(config: Config, result: RunResult, events: EventLog) -> RunResult:
    """A failure with no catalog to keep state or an outbox in: sent once, as it is."""
    notify(config, None, events, Message("failure", job=result.job, step=result.step, error=result.error))
    tail = "\n".join(events.tail)
    notify(config, None, events, Message("failure", job=result.job, step=result.step, error=result.error,
                                         stage="fail", log_tail=tail))
    return result


def _failed(
    name: str, recorder: Callable[[str, str, float], None] | None, exc: BaseException, step: str, t0: float,
    events: EventLog,
) -> RunResult:
    """Record (when there is a catalog), emit and return one failure, with its step and one-line error."""
    msg = _one_line(name, exc, step)
    failed_step = exc.step if isinstance(exc, StepError) else step
    duration = time.monotonic() - t0
    if recorder is not None:
        recorder(msg, failed_step, duration)
    events.event("failed", step=failed_step, duration=round(duration, 3), outcome="failed", error=msg)
    return RunResult(name, False, None, msg, 0, duration, step=failed_step)


def _run_locked(
    config: Config,
    name: str,
    job: JobBase,
    trigger: str,
    events: EventLog,
    progress: bool,
    catalog: Catalog,
) -> RunResult:
    t0 = time.monotonic()
    try:  # the catalog may refuse writes (read-only, full, locked): a failure like any other, said in one line
        catalog.mark_abandoned_runs(name)
        for bid in catalog.reconcile(Store(config.store_root), name, config.settings.s3.enabled):
            events.event(
                "reconciled", job=name, backup_id=bid, step="start", reason="committed backup had no catalog row"
            )
        run_id = catalog.start_run(name, trigger)
    except (sqlite3.Error, OSError) as exc:
        return _failed(name, None, CatalogError(exc), "catalog", t0, events)
    started = datetime.now(UTC)

    def record(msg: str, step: str, duration: float) -> None:
        catalog.finish_run(run_id, "failed", error=msg, step=step, duration=duration)

    store = Store(config.store_root)
    partial: Path | None = None
    tmp_dir: Path | None = None
    staging = config.state_dir / "staging" / name
    source = source_for(job)
    step = "start"
    try:
        ensure_private_dir(config.store_root)
        for stale in store.sweep_partials(name):
            events.event("swept", job=name, path=str(stale))
        backup_id, partial = store.new_partial(name, started)
        events.bind(job=name, backup_id=backup_id)
        events.event("start", step="start", trigger=trigger, type=job.type)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"backupd-{name}-", dir=ensure_private_dir(config.state_dir / "tmp")))
        step = "dump"
        with ByteProgress(progress and events.tty) as bar:
            ctx = DumpContext(
                job_name=name,
                job=job,
                partial_dir=partial,
                staging_dir=ensure_private_dir(staging),
                tmp_dir=tmp_dir,
                compression=job.compression or config.settings.compression,
                events=events,
                progress=bar,
                recipients=config.recipients_for(name),
            )
            facts = source.dump(job, ctx)
        if not ctx.artifacts:
            raise StepError("dump", "the source produced no artifact")
        step = "commit"
        finished = datetime.now(UTC)
        manifest = {
            "backupd_version": __version__,
            "job": name,
            "type": job.type,
            "backup_id": backup_id,
            "started_at": iso(started),
            "finished_at": iso(finished),
            "trigger": trigger,
            "backup_host": socket.gethostname(),
            "source": facts,
            "artifacts": [a.to_manifest() for a in ctx.artifacts],
            "warnings": ctx.warnings,
            "verified": True,
        }
        if ctx.recipients:  # fingerprints only: the manifest stays readable without a key (docs/security.md)
            manifest["encryption"] = {"format": "age", "recipients": [fingerprint(r) for r in ctx.recipients]}
        final = store.commit(name, backup_id, partial, manifest)
        stored = StoredBackup(job=name, backup_id=backup_id, path=final, manifest=manifest)
        catalog.record_backup(stored, s3_state="pending" if config.settings.s3.enabled else "none")
        total = stored.size
        duration = time.monotonic() - t0
        catalog.finish_run(run_id, "ok", backup_id=backup_id, nbytes=total, duration=duration)
        events.event("committed", step="commit", bytes=total, duration=round(duration, 3), outcome="ok")
    except (BackupdError, OSError) as exc:
        _discard(store, partial)
        return _failed(name, record, exc, step, t0, events)
    except (Terminated, KeyboardInterrupt) as exc:
        _discard(store, partial)
        _failed(name, record, exc, step, t0, events)
        raise
    except Exception as exc:  # a bug: recorded with its type, the other jobs of `run --all` still run
        _discard(store, partial)
        return _failed(name, record, InternalError(exc), step, t0, events)
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not source.keeps_staging(job):  # keep_staging = false: no plaintext mirror between runs
            shutil.rmtree(staging, ignore_errors=True)
    # The backup is committed and the run recorded as ok: nothing after this point can undo that.
    hook_errors: dict[str, str] = {}
    try:
        hook_errors = after_commit(config, name, stored, catalog, events)
    except Terminated as exc:
        events.event("warning", step="after commit", error=f"{exc}: S3 copy and pruning resume on the next run")
    return RunResult(name, True, backup_id, None, total, duration, final, s3_error=hook_errors.get("copy_hook"))


class CatalogError(BackupdError):
    """The catalog refused a write before the run could start (a read-only state dir, a full disk)."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(f"catalog: {type(exc).__name__}: {exc}")


class InternalError(BackupdError):
    """An unexpected exception, kept as its type and message (the traceback goes to the debug log)."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(f"internal error: {type(exc).__name__}: {exc}")
        self.__cause__ = exc


def _discard(store: Store, partial: Path | None) -> None:
    if partial is not None:
        store.discard(partial)


def _one_line(job: str, exc: BaseException, step: str) -> str:
    if isinstance(exc, StepError):
        text = str(exc) if exc.job else f"job {job}, {exc}"
    elif isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"job {job}, step {step}: {what}{where}"
    else:
        text = f"job {job}, step {step}: {exc or type(exc).__name__}"
    return " ".join(text.split())


def after_commit(
    config: Config, name: str, backup: StoredBackup, catalog: Catalog, events: EventLog
) -> dict[str, str]:
    """Hooks that run once a backup is safely committed: S3 copy, retention.

    None of them can un-commit the backup; their failures are reported (returned by hook name, for the
    notifications) and retried on the next run.
    """
    errors: dict[str, str] = {}
    for hook in AFTER_COMMIT_HOOKS:
        hook_name = getattr(hook, "__name__", "hook")
        try:
            hook(config, name, backup, catalog, events)
        except BackupdError as exc:
            errors[hook_name] = str(exc)
            events.event("warning", step=hook_name, error=str(exc))
        except Exception as exc:  # a hook bug must not turn a committed backup into a failed run
            errors[hook_name] = f"{type(exc).__name__}: {exc}"
            events.event("warning", step=hook_name, error=errors[hook_name])
    return errors


AfterCommit = Callable[[Config, str, StoredBackup, Catalog, EventLog], None]
# S3 copy first (a backup not yet in S3 is never pruned), then local retention, then S3 retention.
AFTER_COMMIT_HOOKS: tuple[AfterCommit, ...] = (copy_hook, segment_copy_hook, prune_hook, s3_prune_hook)
