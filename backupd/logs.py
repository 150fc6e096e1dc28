"""Run events: JSON lines when not on a TTY (for journald/log shippers), short human lines on a TTY."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

TAIL_LINES = 200
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Each event's level; any other event is "info". `[logging] level` drops the events below it.
EVENT_LEVELS = {
    "warning": "warning",
    "missed": "warning",
    "clock_jump": "warning",
    "reload_failed": "error",
    "spawn_failed": "error",
    "s3_failed": "error",
    "failed": "error",
    "kill": "warning",
    "notify_failed": "warning",
    "notify_undeliverable": "warning",
}


def event_level(event: str, fields: dict[str, Any]) -> str:
    """An event's level; an `outcome="failed"` or an `error` field makes any event at least a warning."""
    level = EVENT_LEVELS.get(event, "info")
    if (fields.get("outcome") == "failed" or fields.get("error")) and LEVELS[level] < LEVELS["warning"]:
        return "warning"
    return level


class EventLog:
    """One event per line: job, backup_id, step, bytes, duration, outcome and whatever else applies."""

    def __init__(
        self, fmt: str = "auto", stream: TextIO | None = None, quiet: bool = False, level: str = "info"
    ) -> None:
        self.stream = stream or sys.stdout
        self.min_level = LEVELS[level]
        tty = self.stream.isatty()
        self.json = fmt == "json" or (fmt == "auto" and not tty)
        self.quiet = quiet
        self.tty = tty and not self.json
        self.context: dict[str, Any] = {}
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # the last lines, for a Healthchecks ping's body

    def bind(self, **fields: Any) -> None:
        self.context.update(fields)

    def event(self, event: str, **fields: Any) -> None:
        level = event_level(event, fields)
        if LEVELS[level] < self.min_level:
            return
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, "level": level}
        record.update(self.context)
        record.update({k: v for k, v in fields.items() if v is not None})
        if self.json:
            line = json.dumps(record, default=str)
        else:
            extras = " ".join(
                f"{k}={v}" for k, v in record.items() if k not in {"ts", "event", "job", "backup_id", "level"}
            )
            line = f"{record.get('job', '')} {event} {extras}".strip()
        self.tail.append(line)
        if self.quiet:
            return
        self.stream.write(line + "\n")
        self.stream.flush()


class ByteProgress:
    """A progress line (bytes, rate) on a TTY; a no-op elsewhere so logs stay clean."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        if enabled:  # rich only on a TTY: a daemon, a stream or a cron run never loads it
            from rich.progress import (
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                transient=True,
            )

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str) -> ProgressTask:
        return ProgressTask(self._progress, description)


class ProgressTask:
    def __init__(self, progress: Progress | None, description: str) -> None:
        self._progress = progress
        self._id: TaskID | None = None
        self.started = time.monotonic()
        if progress is not None:
            self._id = progress.add_task(description, total=None)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._id is not None:
            self._progress.advance(self._id, n)
