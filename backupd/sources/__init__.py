"""Sources: one module per job type, each exposing the same functions (DESIGN.md 4).

`check(job, ctx)` checks reachability and preconditions, `dump(job, ctx)` writes artifacts through the
pipeline and returns the source facts for the manifest. Restore and drills live in `backupd.restore`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from backupd.config import CompressionCfg, Job
from backupd.formats.base import FormatChecker
from backupd.logs import ByteProgress, EventLog
from backupd.pipeline import ArtifactResult, ArtifactWriter

MODULES = {
    "mysql": "backupd.sources.mysql",
    "files": "backupd.sources.files",
    "wordpress": "backupd.sources.wordpress",
    "redis": "backupd.sources.redis",
    "mongodb": "backupd.sources.mongo",
}


@dataclass
class DumpContext:
    """What a source needs from the run: where to write, where to stage, how to report."""

    job_name: str
    job: Job
    partial_dir: Path
    staging_dir: Path
    tmp_dir: Path
    compression: CompressionCfg
    events: EventLog
    progress: ByteProgress
    artifacts: list[ArtifactResult] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def artifact(self, name: str, fmt: str, ext: str, checker: FormatChecker | None) -> ArtifactWriter:
        task = self.progress.task(f"{self.job_name}: {name}")
        return ArtifactWriter(
            self.partial_dir,
            name,
            fmt,
            ext,
            algorithm=self.compression.algorithm,
            level=self.compression.level,
            checker=checker,
            on_progress=task.advance,
        )

    def add(self, result: ArtifactResult) -> ArtifactResult:
        self.artifacts.append(result)
        self.events.event(
            "artifact",
            step="dump",
            artifact=result.file,
            bytes=result.bytes,
            raw_bytes=result.raw_bytes,
            duration=round(result.seconds, 3),
            outcome="ok" if result.ok else "invalid",
        )
        return result


def source_module(job: Job) -> ModuleType:
    return importlib.import_module(MODULES[job.type])
