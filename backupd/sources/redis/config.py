"""The keys of a `redis` job."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from backupd.settings import Duration, JobBase, SSHCfg
from backupd.sources.base import MirrorKeys


class RedisJob(JobBase, MirrorKeys):
    type: Literal["redis"]
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    password_file: Path | None = None
    require_replica: bool = True
    bgsave: bool = True
    bgsave_timeout: Duration = 3600
    max_age: Duration = 3600
    rdb_path: str | None = None
    ssh: SSHCfg | None = None
