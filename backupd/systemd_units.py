"""Timer mode: per-job drop-ins for the shipped `backupd-run@.timer` / `backupd-run@.service` templates.

The templates hold everything common (hardening, Persistent=true); a drop-in per job sets only what
comes from the config: `OnCalendar=` from the job's cron expression and zone (via
`schedule.systemd_oncalendar`, so the timer fires at the daemon's instants), `RandomizedDelaySec=` from
`scheduler.jitter` and `RuntimeMaxSec=` from the job's `timeout`. Every expression is checked before any
file is written: a schedule OnCalendar cannot express is refused, naming the job file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from backupd.config import Config
from backupd.errors import BackupdError, ConfigError
from backupd.schedule import systemd_oncalendar

HEADER = "# Written by `backupd systemd-units` from {source}; regenerate instead of editing.\n"


def unit_dropins(config: Config) -> dict[str, str]:
    """Relative path -> content for every enabled job; raises ConfigError on an inexpressible schedule."""
    files: dict[str, str] = {}
    jitter = config.settings.scheduler.jitter
    for name, job in sorted(config.jobs.items()):
        if not job.enabled:
            continue
        source = config.job_files.get(name, config.path)
        try:
            calendar = systemd_oncalendar(job.schedule, config.job_timezone(name))
        except ValueError as exc:
            raise ConfigError(source, "schedule", f"cannot be a systemd timer: {exc}") from None
        head = HEADER.format(source=source)
        files[f"backupd-run@{name}.timer.d/schedule.conf"] = (
            f"{head}[Timer]\n# {job.schedule}\nOnCalendar=\nOnCalendar={calendar}\nRandomizedDelaySec={jitter}s\n"
        )
        files[f"backupd-run@{name}.service.d/timeout.conf"] = f"{head}[Service]\nRuntimeMaxSec={job.timeout}s\n"
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
