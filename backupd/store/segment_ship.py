"""When segments go to S3: from the stream's background shipper right after each commit, and from every
`backupd run` of the job (catch-up after a stream that could not reach the bucket). Copying itself is
store/s3_segments.py.

The shipper is a thread beside the stream's reading loop: the loop only wakes it, so a slow or unreachable
bucket never delays reading the binlog. On a failure the segments stay pending (no `.s3.json`) and the
shipper waits (BACKOFF_FIRST, doubling to BACKOFF_MAX) before it tries again. Shippers of one job (the
stream's and a run's) take turns on the `JOB.s3-segments` lock; a run that finds it held leaves the
segments to the stream.
"""

from __future__ import annotations

import threading

from backupd.errors import BackupdError, LockedError
from backupd.logs import EventLog
from backupd.settings import Config
from backupd.store.locks import job_lock
from backupd.store.s3 import Bucket
from backupd.store.s3_base import S3Error, error_text
from backupd.store.s3_segments import check_segment_copy, copy_segment, pending
from backupd.store.segments import SEGMENTS_DIR, SegmentStore

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
IDLE_RECHECK = 60.0  # the shipper looks for pending segments this often even when not woken
STOP_GRACE = 20.0  # on stop, how long the stream waits for the copy in flight


def ship_lock_name(job: str) -> str:
    return f"{job}.s3-segments"


def ship_pending(config: Config, job: str, events: EventLog, bucket: Bucket | None = None) -> tuple[int, list[str]]:
    """Copy the job's pending segments, oldest first; stops at the first failure (the rest would fail the
    same way, or must wait for it: the bucket holds a prefix of the chain). Returns (copied, errors).
    LockedError when another shipper of the job holds the lock."""
    segments = SegmentStore(config.store_root, job)
    todo = pending(segments)
    if not todo:
        return 0, []
    copied = 0
    with job_lock(config.state_dir, ship_lock_name(job)):
        try:
            bucket = bucket or Bucket(config.settings.s3)
        except BackupdError as exc:
            return 0, [str(exc)]
        for seg in pending(segments):
            try:
                if not copied:  # what a killed shipper left half-uploaded (we hold the shippers' lock)
                    _abort_stale(bucket, job)
                record = copy_segment(bucket, job, seg)
            except S3Error as exc:
                events.event("s3_failed", job=job, step="s3", segment=seg.seq, error=exc.reason)
                return copied, [str(exc)]
            except OSError as exc:  # pruned or swept meanwhile: nothing to copy
                events.event("warning", job=job, step="s3", segment=seg.seq, error=error_text(exc))
                continue
            copied += 1
            events.event("s3_copied", job=job, step="s3", segment=seg.seq, bucket=bucket.name, key=record["key"])
    return copied, []


def _abort_stale(bucket: Bucket, job: str) -> None:
    try:
        bucket.abort_stale_uploads(job, under=f"{SEGMENTS_DIR}/")
    except Exception as exc:  # the bucket cannot be reached: one line, the segments stay pending
        raise S3Error(f"aborting stale uploads under {bucket.url(bucket.key(job, SEGMENTS_DIR))}: {error_text(exc)}",
                      job=job) from exc  # fmt: skip


def verify_segments(config: Config, job: str, events: EventLog, bucket: Bucket) -> tuple[str, list[str]]:
    """`verify --s3` for a PITR job: ship what is pending, then HEAD-check every copied segment. A copy that
    fails its check loses its `.s3.json`, so it is pending again and shipped anew (as a failed backup copy
    is). Returns (what was done, problems)."""
    try:
        copied, errors = ship_pending(config, job, events, bucket)
    except LockedError:
        copied, errors = 0, []  # the stream's shipper is at it
    if errors:
        return "failed", errors
    segments = [s for s in SegmentStore(config.store_root, job).segments() if s.s3_record() is not None]
    problems: list[str] = []
    for seg in segments:
        try:
            found = check_segment_copy(bucket, job, seg)
        except Exception as exc:
            return "failed", [*problems, f"checking segment {seg.seq:08d}: {error_text(exc)}"]
        if found:
            problems.extend(found)
            seg.s3_record_path.unlink(missing_ok=True)
            events.event("s3_failed", job=job, step="verify-s3", segment=seg.seq, error=found[0])
    return f"{len(segments)} segment(s) checked, {copied} copied", problems


def pending_count(config: Config, job: str) -> int:
    """Committed segments still owed to S3 (0 with S3 off): `status` and `backupd_pitr_s3_pending`."""
    if not config.settings.s3.enabled:
        return 0
    return len(pending(SegmentStore(config.store_root, job)))


def segment_copy_hook(config: Config, name: str, backup: object, catalog: object, events: EventLog) -> None:
    """Runner hook: a run of a job that has segments also ships the pending ones (a warning on failure)."""
    if not config.settings.s3.enabled or name not in config.pitr_windows:
        return
    try:
        _, errors = ship_pending(config, name, events)
    except LockedError:
        return  # the stream's shipper is at it
    except (OSError, ValueError) as exc:
        raise S3Error(error_text(exc), job=name) from exc
    if errors:
        raise S3Error(f"segment copy failed (kept pending, retried): {errors[0]}", job=name)


class SegmentShipper:
    """The stream's background copier: `wake()` after each commit, `stop()` when the stream ends."""

    def __init__(self, config: Config, job: str, events: EventLog) -> None:
        self.config, self.job, self.events = config, job, events
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"s3-segments-{job}", daemon=True)
        self.failing = False
        self.copied = 0

    def start(self) -> None:
        self._wake.set()  # segments left pending by an earlier stream go first
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = STOP_GRACE) -> None:
        """Ship what the stream committed last (unless the bucket is failing), then end, within `timeout`."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        bucket: Bucket | None = None
        while True:
            if self.failing:
                if self._stop.wait(backoff):
                    return
            else:
                self._wake.wait(IDLE_RECHECK)
            final = self._stop.is_set()
            self._wake.clear()
            try:
                bucket = bucket or Bucket(self.config.settings.s3)
                copied, errors = ship_pending(self.config, self.job, self.events, bucket)
            except LockedError:
                copied, errors = 0, []  # a run is shipping them
            except Exception as exc:  # never let the shipper die: the segments stay pending
                copied, errors = 0, [error_text(exc)]
            self.copied += copied
            if errors:
                if not self.failing:
                    self.events.event("warning", job=self.job, step="s3", error=errors[0],
                                      message="segments stay pending; retried with backoff")  # fmt: skip
                backoff = min(BACKOFF_MAX, backoff * 2) if self.failing else BACKOFF_FIRST
                self.failing = True
            else:
                self.failing, backoff = False, BACKOFF_FIRST
            if final:
                return
