"""Files: a directory tree (local or over SSH) as one `files.tar` artifact, rsync'd into a staging mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backupd.errors import UsageError
from backupd.sources.base import (
    FILES_TO_OPTION,
    DrillContext,
    DrillResult,
    DumpContext,
    Progress,
    Restored,
    RestoreRequest,
    Source,
)
from backupd.sources.files.config import FilesJob
from backupd.store.backups import StoredBackup


class FilesSource(Source[FilesJob]):
    type = "files"
    model = FilesJob
    restore_options = (FILES_TO_OPTION,)

    def check_reachable(self, job: FilesJob) -> list[str]:
        """The rsync itself is the reachability check; only the SSH login can be proven without it."""
        from backupd.engine.remote import reach_ssh

        return [reach_ssh(job.ssh)] if job.ssh is not None else []

    def dump(self, job: FilesJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.files.sync import sync

        return {"files": sync(ctx, job, job.ssh)}

    def check_restore(self, job: FilesJob, req: RestoreRequest) -> None:
        if not (req.to or req.option("files_to")):
            raise UsageError("restore: a files job needs --to DIR")

    def restore(self, job: FilesJob, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        from backupd.sources.files.extract import restore_tar_artifacts

        dest = Path(req.option("files_to") or req.to or "")
        return restore_tar_artifacts(backup, dest, yes=req.yes, progress=progress)

    def drill(self, job: FilesJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.files.extract import drill_files

        return drill_files(job.drill.target, backup, ctx)
