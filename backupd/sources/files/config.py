"""The keys of a `files` job (and of a wordpress job's `[files]` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from backupd.settings import JobBase, SSHCfg, Strict
from backupd.sources.base import MirrorKeys


class FilesPart(Strict):
    source: str
    exclude: list[str] = []
    # paths under `source` that are symlinks to content elsewhere (an uploads disk): backed up as directories
    follow_links: list[str] = []

    @field_validator("follow_links")
    @classmethod
    def _relative(cls, value: list[str]) -> list[str]:
        for p in value:
            parts = p.strip("/").split("/")
            if not p.strip("/") or p.startswith("/") or ".." in parts:
                raise ValueError(f"{p!r}: give a path relative to source, without '..'")
        return [p.strip("/") for p in value]


class FilesJob(JobBase, FilesPart, MirrorKeys):
    type: Literal["files"]
    ssh: SSHCfg | None = None
