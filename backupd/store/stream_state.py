"""A PITR stream's small state file (`{state_dir}/pitr/{job}.json`, 0600), so `/metrics` and `status` in
another process can tell its lag: the committed position and time, the last server position seen, gaps.

Written by the stream (atomically: temp file, fsync, rename) at each commit and at most every second or so
otherwise; read by anyone. Lag (docs/pitr.md): 0 when nothing the server sent is uncommitted, else the age of
the oldest uncommitted event; while the server has been silent for longer than a few heartbeats (link down,
reconnecting), the time since it last spoke; when no stream holds `JOB.stream`, the time since the state
was last written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from backupd.fsutil import ensure_private_dir
from backupd.store.locks import job_running

STATE_DIR = "pitr"


def stream_lock_name(job: str) -> str:
    """The stream's own lock (`JOB.stream`), separate from the job's run lock."""
    return f"{job}.stream"


def state_path(state_dir: Path, job: str) -> Path:
    return state_dir / STATE_DIR / f"{job}.json"


def write_state(state_dir: Path, job: str, state: dict[str, Any]) -> None:
    path = state_path(state_dir, job)
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps({**state, "updated_at": time.time()}, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # no fsync: advice, rewritten every second
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_state(state_dir: Path, job: str) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(state_dir, job).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stream_running(state_dir: Path, job: str) -> bool:
    return job_running(state_dir, stream_lock_name(job))


def lag_seconds(state: dict[str, Any] | None, running: bool, now: float | None = None) -> float | None:
    """The stream's committed lag; None when it never ran."""
    if state is None:
        return None
    now = time.time() if now is None else now
    if not running:
        return max(0.0, now - float(state.get("updated_at", 0)))
    oldest = state.get("oldest_uncommitted")
    if oldest is not None:
        return max(0.0, now - float(oldest))
    seen = float(state.get("seen_at", 0))  # the last packet from the server: a silent link is lag too
    if now - seen > float(state.get("stale_after", 60)):
        return max(0.0, now - seen)
    return 0.0
