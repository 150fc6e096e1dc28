"""What a notification says: one event, the same fields whatever the channel, and URLs made safe to log."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from backupd import __version__

BODY_LIMIT = 10 * 1024  # a Healthchecks ping body: the tail of the run's log, cut to this


class ChannelError(Exception):
    """A channel did not take a message; the text is one line and never holds the channel's URL."""


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def redact(url: str) -> str:
    """scheme://host/… : enough to tell channels apart in a log line, never the token in the path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<malformed URL>"
    scheme = parts.scheme or "?"
    return f"{scheme}://{host}/…"


@dataclass
class Message:
    """One event. `stage` is for Healthchecks pings only: start | success | fail | log."""

    event: str
    job: str | None = None
    backup_id: str | None = None
    step: str | None = None
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    time: str = field(default_factory=utc_now)
    details: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    log_tail: str | None = None

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        out: dict[str, Any] = {
            "event": self.event,
            "job": self.job,
            "backup_id": self.backup_id,
            "host": self.host,
            "step": self.step,
            "error": self.error,
            "time": self.time,
            "backupd_version": __version__,
            "summary": self.summary(),
        }
        if self.details:
            out["details"] = self.details
        return out

    def summary(self) -> str:
        what = {
            "failure": "backup failed",
            "success": "backup ok",
            "recovered": "backup ok again after failures",
            "overdue": "backup overdue",
            "drill_failure": "restore drill failed",
            "verify_failure": "a stored backup failed its re-verification",
            "s3_failure": "S3 copy failed",
            "s3_lag": "backup not yet in S3",
            "low_space": "store is running out of space",
            "pitr_gap": "gap in point-in-time recovery",
            "notify_failure": "a notification channel keeps failing",
            "test": "test notification",
        }.get(self.event, self.event)
        return f"{what}: job {self.job}" if self.job else what

    def title(self) -> str:
        return f"[backupd] {self.summary()} on {self.host}"

    def text(self) -> str:
        lines = [self.summary() + ".", "", f"host: {self.host}", f"time: {self.time}"]
        for label, value in (("job", self.job), ("backup", self.backup_id), ("step", self.step),
                             ("error", self.error)):
            if value:
                lines.append(f"{label}: {value}")
        for k, v in sorted(self.details.items()):
            lines.append(f"{k}: {v}")
        return "\n".join(lines) + "\n"

    def ping_body(self) -> bytes:
        text = self.log_tail if self.log_tail else self.text()
        data = text.encode("utf-8", "replace")
        return data[-BODY_LIMIT:]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Message:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)
