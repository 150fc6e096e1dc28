"""The keys of a `mysql` job (and of a wordpress job's `[mysql]` table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from backupd.settings import JobBase, SSHCfg, Strict


class MySQLPart(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password_file: Path | None = None
    databases: list[str] = []
    via_ssh: bool = False


class MySQLJob(JobBase, MySQLPart):
    type: Literal["mysql"]
    ssh: SSHCfg | None = None

    @model_validator(mode="after")
    def _ssh_when_needed(self) -> MySQLJob:
        if self.via_ssh and self.ssh is None:
            raise ValueError("via_ssh = true needs an [ssh] table")
        return self
