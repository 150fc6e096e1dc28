"""The keys of a `mysql` job (and of a wordpress job's `[mysql]` table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from backupd.settings import Duration, JobBase, SSHCfg, Strict


class PitrCfg(Strict):
    """`[pitr]` (wordpress: `[mysql.pitr]`): stream the binlog for point-in-time recovery (docs/pitr.md)."""

    enabled: bool = False
    segment: Duration = Field(default=300, ge=1)  # a segment is committed at least this often
    window: Duration = Field(default=7 * 86400, ge=60)  # restorable to any instant this far back
    server_id: int | None = Field(default=None, ge=1, le=2**32 - 1)  # the streamer's replication id

    @model_validator(mode="after")
    def _server_id_when_enabled(self) -> PitrCfg:
        if self.enabled and self.server_id is None:
            raise ValueError("pitr.enabled = true needs pitr.server_id (unique among the server's replicas)")
        return self


class MySQLPart(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password_file: Path | None = None
    databases: list[str] = []
    via_ssh: bool = False
    pitr: PitrCfg = PitrCfg()


class MySQLJob(JobBase, MySQLPart):
    type: Literal["mysql"]
    ssh: SSHCfg | None = None

    @model_validator(mode="after")
    def _ssh_when_needed(self) -> MySQLJob:
        if self.via_ssh and self.ssh is None:
            raise ValueError("via_ssh = true needs an [ssh] table")
        return self
