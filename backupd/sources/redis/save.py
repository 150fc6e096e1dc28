"""Steps 1-2 over the Redis protocol: gate on the server's replication/persistence state, then make a fresh
BGSAVE and prove it finished (LASTSAVE advanced, status ok). Each refusal is one line naming the host and the
field that failed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from backupd.errors import StepError
from backupd.sources.base import DumpContext
from backupd.sources.redis.client import client, host_label, redis_error
from backupd.sources.redis.config import RedisJob

POLL_MAX = 0.5  # seconds between INFO polls once a save is slow
_BUSY_RDB = "already in progress"
_BUSY_CHILD = "another child process is active"


# ---------------------------------------------------------------- 1. health gate


def health_problems(info: dict[str, Any], require_replica: bool) -> list[str]:
    """Every reason the server's state forbids a backup, from INFO replication + persistence (pure)."""
    problems: list[str] = []
    role = str(info.get("role", "?"))
    if require_replica and role != "slave":
        problems.append(f"role is {role} (require_replica = true: point the job at a replica)")
    if role == "slave":
        link = str(info.get("master_link_status", "?"))
        if link != "up":
            since = info.get("master_link_down_since_seconds")
            ago = f", down for {since}s" if since is not None else ""
            problems.append(f"master_link_status is {link}{ago} (require an up link to the master)")
        if int(info.get("master_sync_in_progress", 0)):
            problems.append("master_sync_in_progress is 1 (a full resync from the master is running)")
    for field in ("loading", "async_loading"):
        if int(info.get(field, 0)):
            problems.append(f"{field} is 1 (the server is loading a dataset)")
    return problems


def health_gate(conn: redis.Redis, job: RedisJob) -> dict[str, Any]:
    """Refuse a server that is not a linked, idle replica; returns the INFO fields the manifest records."""
    info: dict[str, Any] = {}
    for section in ("server", "replication", "persistence"):
        info.update(conn.info(section))
    problems = health_problems(info, job.require_replica)
    if problems:
        raise StepError("health", problems[0], host=host_label(job))
    return info


# ---------------------------------------------------------------- 2. fresh dump


COARSE_SLACK = 0.05  # seconds; a Linux tick is at most 10 ms (HZ=100)


def _lastsave(conn: redis.Redis) -> tuple[int, int]:
    """LASTSAVE and the save-attempt counter (rdb_saves, -1 before Redis 7.0)."""
    info = conn.info("persistence")
    return int(info["rdb_last_save_time"]), int(info.get("rdb_saves", -1))


def _server_now(conn: redis.Redis) -> int:
    """The server's clock in whole seconds, as its `time(NULL)` may still read it.

    TIME is gettimeofday(), but the child stamps the RDB's ctime with time(NULL), which on Linux reads the
    coarse clock and can trail by up to a scheduler tick: just after a second boundary TIME says N while a
    save started later still writes ctime N-1. Reading TIME as COARSE_SLACK earlier keeps the two in order.
    """
    sec, usec = conn.time()
    return int(sec + usec / 1e6 - COARSE_SLACK)


def _poll(conn: redis.Redis, deadline: float, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """INFO persistence until `done(info)` or the deadline; None on timeout."""
    delay = 0.02
    while True:
        info: dict[str, Any] = conn.info("persistence")
        if done(info):
            return info
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, POLL_MAX)


@dataclass
class SaveResult:
    lastsave_before: int
    lastsave: int
    requested_at: int  # server clock when BGSAVE was sent: the RDB's ctime must not be older
    seconds: float
    scheduled: bool
    waited_for_running: bool


def fresh_bgsave(conn: redis.Redis, job: RedisJob, timeout: float) -> SaveResult:
    """BGSAVE and wait until it provably finished: LASTSAVE advanced and rdb_last_bgsave_status is ok.

    LASTSAVE has one-second resolution, so we first let the server's clock pass the previous LASTSAVE;
    "advanced" then cannot be confused with a save made earlier in the same second.
    """
    host = host_label(job)
    t0 = time.monotonic()
    deadline = t0 + timeout
    scheduled = waited = False
    while True:
        before, saves = _lastsave(conn)
        while _server_now(conn) <= before:
            time.sleep(0.05)
        requested = _server_now(conn)
        if _lastsave(conn) != (before, saves):
            continue  # another save ended while we waited for the clock: note the new LASTSAVE
        try:
            conn.bgsave(schedule=False)  # redis-py defaults to SCHEDULE, which hides a busy child
            break
        except redis.ResponseError as exc:
            text = str(exc).lower()
            if _BUSY_RDB in text:
                # Someone else's BGSAVE (maybe started before we noted LASTSAVE): let it end, then ours.
                waited = True
                if _poll(conn, deadline, lambda i: not int(i["rdb_bgsave_in_progress"])) is None:
                    raise StepError(
                        "bgsave",
                        f"another BGSAVE was still running after {timeout:.0f}s (bgsave_timeout)",
                        host=host,
                    ) from None
                continue
            if _BUSY_CHILD in text:
                conn.bgsave(schedule=True)  # starts as soon as the AOF rewrite (or module fork) ends
                scheduled = True
                break
            raise StepError("bgsave", f"BGSAVE refused: {' '.join(str(exc).split())}", host=host) from None

    def finished(info: dict[str, Any]) -> bool:
        if int(info["rdb_bgsave_in_progress"]):
            return False
        if saves >= 0:  # rdb_saves (7.0+) counts every attempt, failed ones too
            return int(info["rdb_saves"]) > saves
        if int(info["rdb_last_save_time"]) > before:
            return True
        # not running and LASTSAVE unchanged: ours failed (or a scheduled one has not started yet)
        return not scheduled and info.get("rdb_last_bgsave_status") == "err"

    info = _poll(conn, deadline, finished)
    if info is None:
        raise StepError("bgsave", f"BGSAVE did not finish within {timeout:.0f}s (bgsave_timeout)", host=host)
    status = info.get("rdb_last_bgsave_status")
    if status != "ok":
        raise StepError(
            "bgsave",
            f"rdb_last_bgsave_status is {status} (BGSAVE failed: see the Redis log on {host})",
            host=host,
        )
    after = int(info["rdb_last_save_time"])
    if after <= before:
        raise StepError("bgsave", f"LASTSAVE did not advance past {before} (no new dump was written)", host=host)
    return SaveResult(before, after, requested, time.monotonic() - t0, scheduled, waited)


def locate(conn: redis.Redis, job: RedisJob) -> str:
    """The RDB's path on the Redis host: `rdb_path`, else CONFIG GET dir + dbfilename."""
    if job.rdb_path:
        return job.rdb_path
    try:
        directory = conn.config_get("dir").get("dir")
        name = conn.config_get("dbfilename").get("dbfilename")
    except redis.ResponseError as exc:
        raise StepError(
            "locate",
            f"CONFIG GET is unavailable ({' '.join(str(exc).split())}): set rdb_path in the job",
            host=host_label(job),
        ) from None
    if not directory or not name:
        raise StepError("locate", "CONFIG GET dir/dbfilename returned nothing: set rdb_path", host=host_label(job))
    return f"{directory.rstrip('/')}/{name}"


def _keyspace(conn: redis.Redis) -> dict[str, Any]:
    return {str(db): dict(v) for db, v in conn.info("keyspace").items()}


def fresh_dump(
    job: RedisJob, ctx: DumpContext
) -> tuple[str, SaveResult | None, dict[str, Any], dict[str, Any]]:
    """Steps 1-2 over the Redis protocol: health gate, locate, BGSAVE (when asked), health again, keyspace."""
    host = host_label(job)
    step = "connect"
    try:
        with client(job) as conn:
            conn.ping()
            step = "health"
            ctx.events.event("step", step="health", host=host)
            info = health_gate(conn, job)
            path = locate(conn, job)
            save: SaveResult | None = None
            if job.bgsave:
                step = "bgsave"
                ctx.events.event("step", step="bgsave", host=host)
                save = fresh_bgsave(conn, job, float(job.bgsave_timeout))
                step = "health"
                info = health_gate(conn, job)  # the link may have dropped while we saved
            return path, save, info, _keyspace(conn)
    except redis.RedisError as exc:
        raise redis_error(exc, job, step) from None
