"""One run of a job: lock, dump, pipeline, verify, commit, ship, prune, notify.

A scheduled run (the daemon spawns `backupd run JOB`) and a manual run take this same path. Whatever goes
wrong, the `.partial` directory is removed, the failure is recorded in the catalog, and the previous
backups are untouched.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupd import __version__
from backupd.engine.signals import Terminated, terminate_on_signals
from backupd.errors import BackupdError, StepError
from backupd.fsutil import ensure_private_dir
from backupd.logs import ByteProgress, EventLog
from backupd.settings import Config, JobBase
from backupd.sources import source_for
from backupd.sources.base import DumpContext
from backupd.store.backups import Store, StoredBackup
from backupd.store.catalog import Catalog
from backupd.store.locks import job_lock
from backupd.store.prune import prune_hook, s3_prune_hook
from backupd.store.s3 import copy_hook


@dataclass
class RunResult:
    job: str
    ok: bool
    backup_id: str | None
    error: str | None
    bytes: int
    duration: float
    path: Path | None = None


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_job(config: Config, name: str, trigger: str, events: EventLog, progress: bool = False) -> RunResult:
    """Run one job to completion; raises LockedError when it is already running, else returns a result."""
    job = config.job(name)
    state = ensure_private_dir(config.state_dir)
    store = Store(ensure_private_dir(config.store_root))
    with job_lock(state, name), terminate_on_signals():
        catalog = Catalog(state)
        try:
            return _run_locked(config, name, job, trigger, events, progress, store, catalog)
        finally:
            catalog.close()


def _run_locked(
    config: Config,
    name: str,
    job: JobBase,
    trigger: str,
    events: EventLog,
    progress: bool,
    store: Store,
    catalog: Catalog,
) -> RunResult:
    catalog.mark_abandoned_runs(name)
    for stale in store.sweep_partials(name):
        events.event("swept", job=name, path=str(stale))
    run_id = catalog.start_run(name, trigger)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    backup_id, partial = store.new_partial(name, started)
    events.bind(job=name, backup_id=backup_id)
    events.event("start", step="start", trigger=trigger, type=job.type)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"backupd-{name}-", dir=ensure_private_dir(config.state_dir / "tmp")))
    step = "dump"
    try:
        with ByteProgress(progress and events.tty) as bar:
            ctx = DumpContext(
                job_name=name,
                job=job,
                partial_dir=partial,
                staging_dir=ensure_private_dir(config.state_dir / "staging" / name),
                tmp_dir=tmp_dir,
                compression=job.compression or config.settings.compression,
                events=events,
                progress=bar,
            )
            facts = source_for(job).dump(job, ctx)
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
            "verified": True,
        }
        final = store.commit(name, backup_id, partial, manifest)
        stored = StoredBackup(job=name, backup_id=backup_id, path=final, manifest=manifest)
        catalog.record_backup(stored, s3_state="pending" if config.settings.s3.enabled else "none")
        total = stored.size
        duration = time.monotonic() - t0
        catalog.finish_run(run_id, "ok", backup_id=backup_id, nbytes=total, duration=duration)
        events.event("committed", step="commit", bytes=total, duration=round(duration, 3), outcome="ok")
    except (BackupdError, OSError, Terminated) as exc:
        store.discard(partial)
        msg = _one_line(name, exc, step)
        duration = time.monotonic() - t0
        failed_step = exc.step if isinstance(exc, StepError) else step
        catalog.finish_run(run_id, "failed", error=msg, step=failed_step, duration=duration)
        events.event("failed", step=failed_step, duration=round(duration, 3), outcome="failed", error=msg)
        if isinstance(exc, Terminated):
            raise
        return RunResult(name, False, None, msg, 0, duration)
    except BaseException:
        store.discard(partial)
        catalog.finish_run(run_id, "failed", error="internal error (see --debug)", step=step)
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    # The backup is committed and the run recorded as ok: nothing after this point can undo that.
    try:
        after_commit(config, name, stored, catalog, events)
    except Terminated as exc:
        events.event("warning", step="after commit", error=f"{exc}: S3 copy and pruning resume on the next run")
    return RunResult(name, True, backup_id, None, total, duration, final)


def _one_line(job: str, exc: BaseException, step: str) -> str:
    if isinstance(exc, StepError):
        text = str(exc) if exc.job else f"job {job}, {exc}"
    elif isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"job {job}, step {step}: {what}{where}"
    else:
        text = f"job {job}, step {step}: {exc}"
    return " ".join(text.split())


def after_commit(config: Config, name: str, backup: StoredBackup, catalog: Catalog, events: EventLog) -> None:
    """Hooks that run once a backup is safely committed: S3 copy, retention, notifications.

    None of them can un-commit the backup; their failures are reported and retried on the next run.
    """
    for hook in AFTER_COMMIT_HOOKS:
        try:
            hook(config, name, backup, catalog, events)
        except BackupdError as exc:
            events.event("warning", step=getattr(hook, "__name__", "hook"), error=str(exc))
        except Exception as exc:  # a hook bug must not turn a committed backup into a failed run
            events.event("warning", step=getattr(hook, "__name__", "hook"), error=f"{type(exc).__name__}: {exc}")


AfterCommit = Callable[[Config, str, StoredBackup, Catalog, EventLog], None]
# S3 copy first (a backup not yet in S3 is never pruned), then local retention, then S3 retention.
AFTER_COMMIT_HOOKS: tuple[AfterCommit, ...] = (copy_hook, prune_hook, s3_prune_hook)
