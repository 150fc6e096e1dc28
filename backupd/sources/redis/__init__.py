"""Redis: a fresh RDB from a healthy replica, copied over SSH, verified while it is copied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backupd.errors import BackupdError, UsageError
from backupd.sources.base import (
    DrillContext,
    DrillResult,
    DumpContext,
    Progress,
    Restored,
    RestoreRequest,
    Source,
    artifacts,
)
from backupd.sources.redis.config import RedisJob
from backupd.store.backups import StoredBackup

LIVE_SCHEMES = ("redis://", "rediss://")


class RedisSource(Source[RedisJob]):
    type = "redis"
    model = RedisJob

    def check_reachable(self, job: RedisJob) -> list[str]:
        from backupd.engine.remote import reach_ssh
        from backupd.sources.redis.client import reach_redis

        details = [reach_ssh(job.ssh)] if job.ssh is not None else []
        return [*details, reach_redis(job)]

    def dump(self, job: RedisJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.redis.dump import dump_rdb

        return dump_rdb(job, ctx)

    def check_restore(self, job: RedisJob, req: RestoreRequest) -> None:
        if not req.to:
            raise UsageError("restore: a redis job needs --to DIR (or redis://host:port for the steps)")

    def before_restore(self, job: RedisJob, backup: StoredBackup, req: RestoreRequest) -> None:
        """A running server cannot load an RDB: say exactly what to do instead, and write nothing."""
        from backupd.sources.redis.load import redis_live_steps

        if req.to and req.to.startswith(LIVE_SCHEMES):
            rdb = artifacts(backup, "redis-rdb")
            stored = str(backup.path / rdb[0]["file"]) if rdb else "?"
            encrypted = any(a.get("encrypted") for a in rdb)
            raise BackupdError(redis_live_steps(req.to, backup.job, backup.backup_id, stored, encrypted=encrypted))

    def restore(self, job: RedisJob, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        from backupd.sources.redis.load import restore_rdb

        return [restore_rdb(backup, Path(req.to or ""), yes=req.yes, progress=progress)]

    def drill(self, job: RedisJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.redis.load import drill_redis

        return drill_redis(backup, ctx)
