"""Timer mode: per-job drop-ins for the shipped `backupd-run@` and `backupd-drill@` timer/service templates.

The templates hold everything common (hardening, Persistent=true); a drop-in per job sets only what
comes from the config: the `OnCalendar=` values of the job's cron expression (`schedule` for backupd-run@,
`drill_schedule` for backupd-drill@) and zone, `RandomizedDelaySec=` from `scheduler.jitter` and
`TimeoutStartSec=` from the job's `timeout` (the services are Type=oneshot, on which systemd ignores
`RuntimeMaxSec=`). Every expression is checked before any file is written: a schedule OnCalendar cannot
express is refused, naming the job file and the key.

The values come from `schedule.systemd_calendar`: an empty `OnCalendar=` (dropping the template's
placeholder), then one line per value, so the timer fires at the daemon's instants (`backupd next`) on DST
change days too, for every schedule and zone. Rule-shaped values (``Sun *-03-25..31 04:00:00 ...``) never
run out. In a zone whose clock changes follow no rule the values for them are dated: the drop-in says so
and until when, `dated_timers` lists such timers and `backupd systemd-units` warns about each; run it again
before that year ends, and after any tzdata update that changes a zone's rules.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from backupd.errors import BackupdError, ConfigError
from backupd.schedule import TimerCalendar, systemd_calendar
from backupd.settings import Config

HEADER = "# Written by `backupd systemd-units` from {source}; regenerate instead of editing.\n"


def _timer_units(config: Config) -> list[tuple[str, str, str, str]]:
    """(template prefix, job name, config key, cron expression) of every timer the enabled jobs need."""
    units = []
    for name, job in sorted(config.jobs.items()):
        if not job.enabled:
            continue
        units.append(("backupd-run", name, "schedule", job.schedule))
        if job.drill_schedule:
            units.append(("backupd-drill", name, "drill_schedule", job.drill_schedule))
    if units and config.settings.scheduler.verify_schedule:  # one unit for every job: name "" (no @JOB)
        units.append(("backupd-verify", "", "scheduler.verify_schedule", config.settings.scheduler.verify_schedule))
    return units


def _unit(prefix: str, name: str) -> str:
    return f"{prefix}@{name}" if name else prefix


def _zone(config: Config, name: str) -> str:
    return config.job_timezone(name) if name else config.settings.scheduler.timezone


def timer_names(config: Config) -> list[str]:
    """The timers to enable in timer mode: `backupd-run@JOB.timer`, plus `backupd-drill@JOB.timer` for drills."""
    return [f"{_unit(prefix, name)}.timer" for prefix, name, _key, _expr in _timer_units(config)]


def _calendars(config: Config, now: datetime | None) -> list[tuple[str, str, str, TimerCalendar]]:
    """(template prefix, job name, cron expression, calendar) per timer; ConfigError on an inexpressible schedule."""
    out = []
    for prefix, name, key, expr in _timer_units(config):
        try:
            calendar = systemd_calendar(expr, _zone(config, name), now=now)
        except ValueError as exc:
            source = config.job_files.get(name, config.path)
            raise ConfigError(source, key, f"cannot be a systemd timer: {exc}") from None
        out.append((prefix, name, expr, calendar))
    return out


def unit_dropins(config: Config, now: datetime | None = None) -> dict[str, str]:
    """Relative path -> content for every enabled job and its drills; ConfigError on an inexpressible schedule.

    ``now`` (default: the current time) is the first year whose DST changes are examined.
    """
    files: dict[str, str] = {}
    jitter = config.settings.scheduler.jitter
    for prefix, name, expr, calendar in _calendars(config, now):
        unit = _unit(prefix, name)
        head = HEADER.format(source=config.job_files.get(name, config.path))
        notes = "".join(f"# {note}\n" for note in calendar.notes)
        values = "".join(f"OnCalendar={value}\n" for value in calendar.values)
        files[f"{unit}.timer.d/schedule.conf"] = (
            f"{head}[Timer]\n# {expr}\n{notes}OnCalendar=\n{values}RandomizedDelaySec={jitter}s\n"
        )
        if name:  # the re-verification has no timeout: it is background work that resumes where it stopped
            job = config.jobs[name]
            files[f"{unit}.service.d/timeout.conf"] = f"{head}[Service]\nTimeoutStartSec={job.timeout}s\n"
    return files


def dated_timers(config: Config, now: datetime | None = None) -> list[tuple[str, str, int]]:
    """(timer, zone, last year covered) of the timers with dated values: regenerate them before that year ends."""
    return [
        (f"{_unit(prefix, name)}.timer", _zone(config, name), calendar.dated_until)
        for prefix, name, _expr, calendar in _calendars(config, now)
        if calendar.dated_until is not None
    ]


def write_units(config: Config, out: Path) -> list[Path]:
    """Write the drop-ins under `out` (atomically, 0644: systemd reads them as root, no secrets inside)."""
    files = unit_dropins(config)
    written = []
    for rel, text in files.items():
        path = out / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise BackupdError(f"systemd-units: cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
