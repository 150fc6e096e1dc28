"""WordPress: the site's database and its files in one backup with two artifacts, over one SSH host."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from backupd.errors import BackupdError, UsageError
from backupd.settings import JobBase, SSHCfg
from backupd.sources.base import (
    DATABASE_OPTION,
    FILES_TO_OPTION,
    PASSWORD_FILE_OPTION,
    DrillContext,
    DrillResult,
    DumpContext,
    MirrorKeys,
    PointInTime,
    Progress,
    Restored,
    RestoreRequest,
    Source,
    StreamContext,
    drill_password,
)
from backupd.sources.files.config import FilesPart
from backupd.sources.mysql.config import MySQLPart
from backupd.store.backups import StoredBackup
from backupd.store.segments import SegmentStore


class WordPressJob(JobBase, MirrorKeys):
    type: Literal["wordpress"]
    mysql: MySQLPart
    files: FilesPart
    ssh: SSHCfg

    @model_validator(mode="after")
    def _one_database(self) -> WordPressJob:
        if not self.mysql.databases:
            raise ValueError("mysql.databases must name the WordPress database")
        return self


class WordPressSource(Source[WordPressJob], PointInTime[WordPressJob]):
    type = "wordpress"
    model = WordPressJob
    restore_options = (FILES_TO_OPTION, PASSWORD_FILE_OPTION, DATABASE_OPTION)

    def check_reachable(self, job: WordPressJob) -> list[str]:
        from backupd.sources.mysql.client import reach_mysql

        return reach_mysql(job.mysql, job.ssh)

    def dump(self, job: WordPressJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.files.sync import sync
        from backupd.sources.mysql.dump import dump_part

        databases = dump_part(ctx, job.mysql, job.ssh)
        files = sync(ctx, job.files, job.ssh)
        return {"databases": databases, "files": files}

    def check_restore(self, job: WordPressJob, req: RestoreRequest) -> None:
        from backupd.sources.mysql.client import parse_mysql_uri

        if not req.to:
            raise UsageError("restore: a wordpress job needs --to URI")
        if not req.option("files_to"):
            raise UsageError("restore: a wordpress job needs --files-to DIR as well as --to URI")
        parse_mysql_uri(req.to)

    def restore(
        self, job: WordPressJob, backup: StoredBackup, req: RestoreRequest, progress: Progress
    ) -> list[Restored]:
        from backupd.sources.files.extract import directory_is_empty, restore_tar_artifacts
        from backupd.sources.mysql.client import parse_mysql_uri, restore_sql_artifacts

        files_to = Path(req.option("files_to"))
        if not directory_is_empty(files_to) and not req.yes:  # checked before the database is written
            raise BackupdError(f"restore: target directory {files_to} is not empty; use --yes to restore over it")
        target = parse_mysql_uri(req.to or "")
        only = req.option("database")
        done = restore_sql_artifacts(backup, target, req.password(), only=only, yes=req.yes, progress=progress)
        return done + restore_tar_artifacts(backup, files_to, yes=req.yes, progress=progress)

    def drill(self, job: WordPressJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.files.extract import drill_files
        from backupd.sources.mysql.drill import drill_sql

        sql = drill_sql(job.drill.target, drill_password(job.mysql.password_file), backup, ctx)
        files = drill_files(None, backup, ctx)  # a wordpress [drill] target is the MySQL server
        return DrillResult(sql.checks + files.checks, sql.restore_seconds + files.restore_seconds)

    # -- point-in-time recovery (docs/pitr.md): the site's database, through its MySQL part
    def pitr_enabled(self, job: WordPressJob) -> bool:
        return job.mysql.pitr.enabled

    def check_pitr(self, job: WordPressJob) -> list[str]:
        from backupd.sources.mysql.stream import check_pitr_part

        return check_pitr_part(job.mysql, job.ssh)

    def stream(self, job: WordPressJob, ctx: StreamContext) -> None:
        from backupd.sources.mysql.stream import stream_part

        stream_part(job.mysql, job.ssh, ctx)

    def restore_until(
        self, job: WordPressJob, backups: list[StoredBackup], segments: SegmentStore, req: RestoreRequest,
        progress: Progress,
    ) -> list[Restored]:
        raise UsageError("restore --until: not implemented yet")

    def pitr_drill(
        self, job: WordPressJob, backups: list[StoredBackup], segments: SegmentStore, ctx: DrillContext
    ) -> DrillResult:
        raise UsageError("pitr drill: not implemented yet")
