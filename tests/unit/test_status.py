"""status.job_status against a real catalog with controlled times; `backupd status` / `next` exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from backupd.cli import main
from backupd.config import load_config
from backupd.daemon.metrics import make_registry
from backupd.daemon.status import MIN_GRACE, job_status
from backupd.lab.content import write_config
from backupd.settings import Config
from backupd.store.catalog import Catalog

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job(schedule: str, **extra: Any) -> dict[str, Any]:
    return {"type": "files", "source": "/srv", "schedule": schedule, **extra}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    path = write_config(
        tmp_path,
        {
            "daily": job("0 3 * * *", timeout="1h"),
            "hourly": job("0 * * * *", timeout="6h"),
            "off": job("0 3 * * *", enabled=False),
            "drilled": job("0 3 * * *", drill_schedule="0 5 * * 0"),
        },
    )
    return load_config(path)


def add_run(cat: Catalog, name: str, started: datetime, outcome: str, error: str | None = None) -> None:
    run_id = cat.start_run(name, "schedule")
    cat.finish_run(run_id, outcome, backup_id="X" if outcome == "ok" else None, error=error, nbytes=1234,
                   duration=5.0)
    cat.db.execute("UPDATE runs SET started_at=?, finished_at=? WHERE id=?",
                   (ts(started), ts(started + timedelta(seconds=5)), run_id))


def test_never_run_job_is_overdue_once_a_fire_time_is_past_grace(cfg: Config) -> None:
    cat = Catalog(cfg.state_dir)
    st = job_status(cfg, cat, "daily", NOW)
    assert st.overdue and st.last_success_at is None and st.last_run_outcome is None
    assert st.due_since == datetime(2026, 3, 10, 3, 0, tzinfo=UTC)
    assert st.grace_seconds == 3600  # min(timeout 1h, interval 24h), above the 15 min floor
    assert st.next_run == datetime(2026, 3, 11, 3, 0, tzinfo=UTC)
    # with yesterday's backup, 03:30 is within the grace of today's 03:00 run; 04:01 is past it
    add_run(cat, "daily", datetime(2026, 3, 9, 3, 0, 1, tzinfo=UTC), "ok")
    assert not job_status(cfg, cat, "daily", datetime(2026, 3, 10, 3, 30, tzinfo=UTC)).overdue
    assert job_status(cfg, cat, "daily", datetime(2026, 3, 10, 4, 1, tzinfo=UTC)).overdue


def test_success_after_latest_fire_is_not_overdue_and_failure_is_reported(cfg: Config) -> None:
    cat = Catalog(cfg.state_dir)
    add_run(cat, "daily", datetime(2026, 3, 10, 3, 0, 1, tzinfo=UTC), "ok")
    add_run(cat, "daily", datetime(2026, 3, 10, 9, 0, tzinfo=UTC), "failed", error="job daily, step rsync: boom")
    st = job_status(cfg, cat, "daily", NOW)
    assert not st.overdue
    assert st.last_success_age_seconds == pytest.approx(9 * 3600 - 1)
    assert st.last_run_outcome == "failed" and st.last_run_error == "job daily, step rsync: boom"
    assert st.runs_total == {"ok": 1, "failed": 1}
    assert st.last_backup_bytes == 1234
    # a day later the next 03:00 run is missing
    assert job_status(cfg, cat, "daily", NOW + timedelta(days=1)).overdue


def test_grace_is_capped_by_the_interval_and_floored_at_15_minutes(cfg: Config) -> None:
    cat = Catalog(cfg.state_dir)
    add_run(cat, "hourly", datetime(2026, 3, 10, 10, 0, 2, tzinfo=UTC), "ok")
    st = job_status(cfg, cat, "hourly", NOW - timedelta(minutes=1))
    assert st.grace_seconds == 3600  # timeout 6h, but one interval is the most a run may lag
    assert not st.overdue  # the 11:00 run is within its grace at 11:59
    assert job_status(cfg, cat, "hourly", NOW + timedelta(minutes=1)).overdue
    assert timedelta(minutes=15) == MIN_GRACE


def test_disabled_job_is_never_overdue_and_has_no_next_run(cfg: Config) -> None:
    st = job_status(cfg, Catalog(cfg.state_dir), "off", NOW)
    assert not st.overdue and st.next_run is None


def test_drill_fields_and_metrics(cfg: Config) -> None:
    cat = Catalog(cfg.state_dir)
    add_run(cat, "drilled", datetime(2026, 3, 10, 3, 0, 1, tzinfo=UTC), "ok")
    d1 = cat.start_drill("drilled", "X")
    cat.finish_drill(d1, "ok", restore_seconds=3.0)
    d2 = cat.start_drill("drilled", "X")
    cat.finish_drill(d2, "failed", error="rows differ")
    st = job_status(cfg, cat, "drilled", NOW)
    assert st.last_drill_outcome == "failed" and st.last_drill_error == "rows differ"
    assert st.last_drill_success_at is not None
    assert st.next_drill == datetime(2026, 3, 15, 5, 0, tzinfo=UTC)
    text = generate_latest(make_registry(lambda: cfg)).decode()
    assert 'backupd_runs_total{backup_job="drilled",outcome="ok"} 1.0' in text
    assert 'backupd_job_overdue{backup_job="daily"} 1.0' in text
    assert 'backupd_last_drill_success_timestamp_seconds{backup_job="drilled"}' in text
    assert 'backupd_last_success_timestamp_seconds{backup_job="daily"}' not in text  # never succeeded: absent


def test_status_cli_exit_codes(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(cfg.path), "status", "--json"]) == 1  # never-run jobs are overdue
    out, err = capsys.readouterr()
    rows = {r["job"]: r for r in json.loads(out)}
    assert rows["daily"]["overdue"] is True and rows["off"]["overdue"] is False
    assert err.strip().startswith("backupd: overdue: daily")
    cat = Catalog(cfg.state_dir)
    now = datetime.now(UTC)
    for name in ("daily", "hourly", "drilled"):
        add_run(cat, name, now, "ok")
    assert main(["--config", str(cfg.path), "status"]) == 0
    out, _ = capsys.readouterr()
    assert "LAST GOOD BACKUP" in out and "OVERDUE" in out


def test_next_cli(cfg: Config, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_config(tmp_path / "tz", {"night": job("30 3 * * *", timezone="Europe/Tallinn")})
    assert main(["--config", str(path), "next", "night", "--count", "2", "--after", "2026-03-28T12:00Z"]) == 0
    out, _ = capsys.readouterr()
    # spring forward on 2026-03-29: 03:30 local does not exist, the run happens at the end of the gap
    assert "2026-03-29 04:00 EEST (2026-03-29 01:00 UTC)" in out
    assert "2026-03-30 03:30 EEST (2026-03-30 00:30 UTC)" in out
    assert main(["--config", str(path), "next", "--after", "yesterday"]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err
    assert main(["--config", str(path), "next", "nope"]) == 2
    assert main(["--config", str(path), "next", "--count", "0"]) == 2
