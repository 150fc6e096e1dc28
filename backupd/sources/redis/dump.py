"""Redis: commit only a fresh, complete, verified RDB copied from a healthy replica.

Copying "the latest dump.rdb" naively can ship a stale file (no save since yesterday) or one from a replica
that is resyncing. So a run (1) gates on the server's replication/persistence state over the Redis protocol,
(2) makes a fresh BGSAVE and proves it finished (LASTSAVE advanced, status ok) (both in `save.py`), (3) rsyncs
the file into the job's staging mirror (delta transfer) with `stat` before and after to catch a file replaced
mid-copy (`fetch.py`), and (4) in the same pass, while rsync writes the new copy, streams its bytes through the
pipeline (zstd + sha256 + RDB CRC check) and into `redis-check-rdb`, which decodes every value (`check.py`;
engine/follow.py explains how). This module judges the result and writes the manifest's facts.
Each refusal is one line naming the host and the field that failed.
"""

from __future__ import annotations

from typing import Any

from backupd.errors import StepError
from backupd.fsutil import ensure_private_dir
from backupd.sources.base import DumpContext
from backupd.sources.redis.client import host_label, reach_redis
from backupd.sources.redis.config import RedisJob
from backupd.sources.redis.fetch import FileProbe, FileState, copy_and_stream
from backupd.sources.redis.save import fresh_bgsave, fresh_dump, health_problems

__all__ = ["dump_rdb", "fresh_bgsave", "health_problems", "reach_redis"]  # importers' names, wherever they live

STAGED_NAME = "dump.rdb"


def dump_rdb(job: RedisJob, ctx: DumpContext) -> dict[str, Any]:
    host = host_label(job)
    with FileProbe(job.ssh) as probe:  # the SSH handshake runs while we talk to Redis
        path, save, info, keyspace = fresh_dump(job, ctx)
        staged = ensure_private_dir(ctx.staging_dir / "redis") / STAGED_NAME
        first: FileState | None = None
        if not job.bgsave:
            first = probe.stat(path)
            if first.now - first.mtime > job.max_age:
                raise StepError(
                    "freshness",
                    f"{path} is {first.now - first.mtime}s old, older than max_age {job.max_age}s (bgsave = false)",
                    host=probe.host,
                )
        copied = copy_and_stream(probe, path, ctx, staged, host, first)
    state, rsync_stats, art, check_rdb = copied.state, copied.rsync, copied.artifact, copied.check_rdb
    result = art.check  # registered and format-checked by `writing()`: a failed check raised there
    assert result is not None
    ctime = result.facts.get("ctime")
    if save is not None and isinstance(ctime, int) and ctime < save.requested_at:
        raise StepError(
            "verify",
            f"{path} was saved at {ctime}, before our BGSAVE at {save.requested_at}: stale file "
            "(is rdb_path the file this server writes?)",
            host=host,
        )
    # Key counts go in the artifact's facts (drills compare against them); its stats are the checker's own,
    # which `backupd verify` recomputes from the stored file and must match exactly.
    keys_hint = sum(result.stats.get("keys_hint", {}).values())
    if check_rdb is not None and "unsupported" not in check_rdb:
        if not check_rdb["ok"]:
            raise StepError("redis-check-rdb", f"dump.rdb: {check_rdb.get('error')}", host=host)
        result.facts["keys"] = check_rdb.get("keys", 0)
        result.facts["keys_source"] = "redis-check-rdb"
        result.facts["check_rdb_keys"] = check_rdb.get("keys", 0)
        result.facts["check_rdb_expires"] = check_rdb.get("expires", 0)
        result.facts["check_rdb_already_expired"] = check_rdb.get("already_expired", 0)
    elif keys_hint or not keyspace:
        result.facts["keys"] = keys_hint
        result.facts["keys_source"] = "rdb-header"
    else:
        result.facts["keys"] = sum(int(v.get("keys", 0)) for v in keyspace.values())
        result.facts["keys_source"] = "info-keyspace"

    facts: dict[str, Any] = {
        "host": host,
        "role": info.get("role"),
        "redis_version": info.get("redis_version"),
        "master_link_status": info.get("master_link_status"),
        "master_repl_offset": info.get("master_repl_offset"),
        "slave_repl_offset": info.get("slave_repl_offset"),
        "keyspace": keyspace,
        "rdb_path": path,
        "file_host": probe.host,
        "file_bytes": state.size,
        "file_mtime": state.mtime,
        "rsync": rsync_stats,
        "copy_followed": copied.followed,
        "redis_check_rdb": check_rdb if check_rdb is not None else "not installed",
    }
    if save is not None:
        facts.update(
            lastsave_before=save.lastsave_before,
            lastsave=save.lastsave,
            bgsave_seconds=round(save.seconds, 3),
            bgsave_scheduled=save.scheduled,
            bgsave_waited_for_running=save.waited_for_running,
        )
    else:
        facts.update(lastsave=int(info.get("rdb_last_save_time", 0)), file_age=state.now - state.mtime)
    return facts
