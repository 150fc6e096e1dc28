"""The keys of a `files` job (and of a wordpress job's `[files]` table)."""

from __future__ import annotations

from typing import Literal

from backupd.settings import JobBase, SSHCfg, Strict


class FilesPart(Strict):
    source: str
    exclude: list[str] = []


class FilesJob(JobBase, FilesPart):
    type: Literal["files"]
    ssh: SSHCfg | None = None
