"""Healthchecks channel: `/start` when a run starts, the bare URL on success, `/fail` on failure, each with
the tail of the run's log as the body (cut to 10 kB); `/log` for a test, which changes no check's state.

Any Healthchecks-compatible server works (healthchecks.io, a self-hosted instance). The check's schedule,
time zone and grace must mirror the job's (docs/monitoring.md), since the server decides "late" itself.
"""

from __future__ import annotations

from backupd.notify.message import Message
from backupd.notify.web import post

SUFFIX = {"start": "/start", "success": "", "fail": "/fail", "log": "/log"}


def ping_url(url: str, stage: str) -> str:
    base, _, query = url.partition("?")
    return base.rstrip("/") + SUFFIX[stage] + (f"?{query}" if query else "")


def send(url: str, msg: Message, timeout: float) -> None:
    stage = msg.stage or "log"
    post(ping_url(url, stage), msg.ping_body(), {"Content-Type": "text/plain; charset=utf-8"}, timeout)
