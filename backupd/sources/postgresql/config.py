"""The keys of a `postgresql` job."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from backupd.settings import JobBase, SSHCfg


class PostgresJob(JobBase):
    type: Literal["postgresql"]
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "postgres"
    password_file: Path | None = None
    databases: list[str] = []  # empty: every database that allows connections, templates aside
    via_ssh: bool = False  # run pg_dump on the [ssh] host (which reaches host:port itself)
    ssh: SSHCfg | None = None
    format: Literal["custom", "plain"] = "custom"
    include_role_passwords: bool = False  # the globals keep the roles' password hashes (needs a superuser)

    @model_validator(mode="after")
    def _ssh_when_needed(self) -> PostgresJob:
        if self.via_ssh and self.ssh is None:
            raise ValueError("via_ssh = true needs an [ssh] table")
        for name in self.databases:
            if not name or "\0" in name or len(name.encode()) > 63:
                raise ValueError(f"databases: {name!r} is not a PostgreSQL database name (1 to 63 bytes)")
        return self
