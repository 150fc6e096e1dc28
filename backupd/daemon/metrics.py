"""Prometheus metrics read from the catalog at scrape time.

A custom collector instead of counters updated by the daemon: the runs themselves are child processes
(and manual runs are not the daemon's at all), so the catalog is the only place that sees every run.
A scrape costs a few indexed queries per job. The label is `backup_job`, not `job`: Prometheus sets
`job` on every scraped series itself (the scrape job), and a clash would rename ours to `exported_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from backupd.daemon.status import JobStatus, NotifyStatus, all_status, notify_status
from backupd.settings import Config

OUTCOMES = ("ok", "failed")
CHANNELS = ("webhook", "healthchecks", "email", "apprise")


class CatalogCollector(Collector):
    """Per-job gauges from `status.all_status`; `extra` adds the daemon's own gauges (running, queued)."""

    def __init__(self, config: Callable[[], Config], extra: Callable[[], dict[str, float]] | None = None) -> None:
        self._config = config
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        jobs = all_status(self._config(), datetime.now(UTC))
        yield from job_metrics(jobs)
        yield from notify_metrics(notify_status(self._config()))
        if self._extra is not None:
            for name, value in sorted(self._extra().items()):
                yield GaugeMetricFamily(name, f"backupd daemon: {name.removeprefix('backupd_daemon_')}", value=value)


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def job_metrics(jobs: list[JobStatus]) -> list[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["backup_job"])

    last_ok = gauge("backupd_last_success_timestamp_seconds", "Start time of the last successful backup run")
    duration = gauge("backupd_last_run_duration_seconds", "Duration of the last finished run")
    size = gauge("backupd_last_backup_size_bytes", "Stored size of the last successful backup")
    overdue = gauge("backupd_job_overdue", "1 when a scheduled backup is missing (see backupd status)")
    next_run = gauge("backupd_next_run_timestamp_seconds", "Next scheduled fire time")
    drill_ok = gauge("backupd_last_drill_success_timestamp_seconds", "Start time of the last successful drill")
    drill_dur = gauge("backupd_last_drill_duration_seconds", "Duration of the last finished drill")
    last_failed = gauge("backupd_last_run_failed", "1 when the last finished run failed")
    running = gauge("backupd_job_running", "1 while a run of the job is in progress")
    runs = CounterMetricFamily("backupd_runs", "Finished runs by outcome", labels=["backup_job", "outcome"])
    s3_pending = gauge("backupd_s3_pending_backups", "Committed backups not yet copied to S3 (pending or failed)")
    s3_ok = gauge("backupd_last_s3_copy_success_timestamp_seconds", "Last time a copy of the job was checked in S3")
    verify_ok = gauge("backupd_last_verify_success_timestamp_seconds", "Last good re-verification of a backup")
    unverified = gauge(
        "backupd_oldest_unverified_backup_age_seconds", "Age of the oldest proof among the kept backups"
    )
    pitr_start = gauge(
        "backupd_pitr_window_start_timestamp_seconds", "Oldest instant a restore --until can reach (PITR jobs)"
    )
    verify_failures = CounterMetricFamily(
        "backupd_verify_failures", "Re-verifications that found a copy bad", labels=["backup_job", "where"]
    )
    pitr_lag = gauge("backupd_pitr_lag_seconds", "PITR stream: age of the oldest uncommitted event (0 = caught up)")
    pitr_gaps = CounterMetricFamily("backupd_pitr_gaps", "PITR stream: gaps found (binlog lost before it was streamed)",
                                    labels=["backup_job"])
    pitr_up = gauge("backupd_pitr_stream_running", "1 while the job's PITR stream holds its lock")
    pitr_s3 = gauge("backupd_pitr_s3_pending", "PITR: committed binlog segments not yet copied to S3")
    for st in jobs:
        if st.stream is not None:
            if st.stream["lag_seconds"] is not None:
                pitr_lag.add_metric([st.job], float(st.stream["lag_seconds"]))
            pitr_gaps.add_metric([st.job], float(st.stream["gaps"]))
            pitr_up.add_metric([st.job], 1.0 if st.stream["running"] else 0.0)
            if st.stream.get("s3_pending") is not None:
                pitr_s3.add_metric([st.job], float(st.stream["s3_pending"]))
        for where in ("local", "s3"):
            verify_failures.add_metric([st.job, where], float(st.verify_failures.get(where, 0)))
        pairs: list[tuple[GaugeMetricFamily, Any]] = [
            (verify_ok, _ts(st.last_verify_success_at)),
            (unverified, st.oldest_unverified_age_seconds),
            (last_ok, _ts(st.last_success_at)),
            (duration, st.last_run_duration),
            (size, st.last_backup_bytes),
            (overdue, 1.0 if st.overdue else 0.0),
            (next_run, _ts(st.next_run)),
            (drill_ok, _ts(st.last_drill_success_at)),
            (drill_dur, st.last_drill_duration),
            (last_failed, None if st.last_run_outcome is None else float(st.last_run_outcome == "failed")),
            (running, 1.0 if st.running else 0.0),
            (s3_pending, st.s3_pending),
            (s3_ok, _ts(st.s3_last_copy_at)),
            (pitr_start, _ts(st.pitr_window_start)),
        ]
        for family, value in pairs:
            if value is not None:
                family.add_metric([st.job], float(value))
        for outcome in OUTCOMES:
            runs.add_metric([st.job, outcome], float(st.runs_total.get(outcome, 0)))
    return [last_ok, duration, size, overdue, next_run, drill_ok, drill_dur, last_failed, running, runs, s3_pending,
            s3_ok, verify_ok, unverified, verify_failures, pitr_lag, pitr_gaps, pitr_up, pitr_start, pitr_s3]


def notify_metrics(st: NotifyStatus) -> list[Metric]:
    failures = CounterMetricFamily(
        "backupd_notify_failures", "Notifications given up as undeliverable, by channel", labels=["channel"]
    )
    pending = GaugeMetricFamily("backupd_notify_pending", "Notifications waiting in the outbox", labels=["channel"])
    for ch in sorted(set(CHANNELS) | set(st.undeliverable) | set(st.pending)):
        failures.add_metric([ch], float(st.undeliverable.get(ch, 0)))
        pending.add_metric([ch], float(st.pending.get(ch, 0)))
    return [failures, pending]


def make_registry(
    config: Callable[[], Config], extra: Callable[[], dict[str, float]] | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(config, extra))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST
