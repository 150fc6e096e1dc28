"""Timer mode: per-job drop-ins for the shipped `backupd-run@` and `backupd-drill@` timer/service templates.

The templates hold everything common (hardening, Persistent=true); a drop-in per job sets only what
comes from the config: `OnCalendar=` from the job's cron expression (`schedule` for backupd-run@,
`drill_schedule` for backupd-drill@) and zone (via `schedule.systemd_oncalendar`, so the timer fires at
the daemon's instants), `RandomizedDelaySec=` from `scheduler.jitter` and `TimeoutStartSec=` from the job's
`timeout` (the services are Type=oneshot, on which systemd ignores `RuntimeMaxSec=`). Every expression is
checked before any file is written: a schedule OnCalendar cannot express is refused, naming the job file
and the key.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from backupd.errors import BackupdError, ConfigError
from backupd.schedule import systemd_oncalendar
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
    return units


def timer_names(config: Config) -> list[str]:
    """The timers to enable in timer mode: `backupd-run@JOB.timer`, plus `backupd-drill@JOB.timer` for drills."""
    return [f"{prefix}@{name}.timer" for prefix, name, _key, _expr in _timer_units(config)]


def unit_dropins(config: Config) -> dict[str, str]:
    """Relative path -> content for every enabled job and its drills; ConfigError on an inexpressible schedule."""
    files: dict[str, str] = {}
    jitter = config.settings.scheduler.jitter
    for prefix, name, key, expr in _timer_units(config):
        job = config.jobs[name]
        source = config.job_files.get(name, config.path)
        try:
            calendar = systemd_oncalendar(expr, config.job_timezone(name))
        except ValueError as exc:
            raise ConfigError(source, key, f"cannot be a systemd timer: {exc}") from None
        head = HEADER.format(source=source)
        files[f"{prefix}@{name}.timer.d/schedule.conf"] = (
            f"{head}[Timer]\n# {expr}\nOnCalendar=\nOnCalendar={calendar}\nRandomizedDelaySec={jitter}s\n"
        )
        files[f"{prefix}@{name}.service.d/timeout.conf"] = f"{head}[Service]\nTimeoutStartSec={job.timeout}s\n"
    return files


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
