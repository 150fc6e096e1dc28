"""`[logging] level`: events below it are dropped; failures always get through."""

from __future__ import annotations

import io
import json
from pathlib import Path

from backupd.cli import events_for
from backupd.config import load_config
from backupd.lab.content import write_config
from backupd.logs import EventLog


def lines(log: EventLog) -> list[dict[str, object]]:
    assert isinstance(log.stream, io.StringIO)
    return [json.loads(x) for x in log.stream.getvalue().splitlines()]


def test_level_filters_events_and_failures_pass() -> None:
    log = EventLog("json", stream=io.StringIO(), level="warning")
    log.event("start", step="start")
    log.event("step", step="dump")
    log.event("committed", outcome="ok")
    log.event("warning", error="S3 copy failed")
    log.event("failed", outcome="failed", error="boom")
    log.event("pruned", error="could not delete")  # an info event carrying an error is a warning
    assert [(r["event"], r["level"]) for r in lines(log)] == [
        ("warning", "warning"), ("failed", "error"), ("pruned", "warning"),
    ]


def test_default_info_keeps_everything_above_debug() -> None:
    log = EventLog("json", stream=io.StringIO())
    for e in ("start", "step", "artifact", "committed"):
        log.event(e)
    assert [r["event"] for r in lines(log)] == ["start", "step", "artifact", "committed"]


def test_config_level_reaches_the_event_log(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "etc", {}, settings={"logging": {"format": "json", "level": "error"}})
    log = events_for(load_config(cfg))
    log.stream = io.StringIO()
    log.event("warning", error="x")
    log.event("failed", outcome="failed", error="y")
    assert [r["event"] for r in lines(log)] == ["failed"]
