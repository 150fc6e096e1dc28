"""MySQL/MariaDB: one `{database}.sql` artifact per database; restores and drills through the client."""

from __future__ import annotations

from typing import Any

from backupd.errors import UsageError
from backupd.sources.base import (
    DATABASE_OPTION,
    PASSWORD_FILE_OPTION,
    DrillContext,
    DrillResult,
    DumpContext,
    PointInTime,
    Progress,
    Restored,
    RestoreRequest,
    Source,
    StreamContext,
    drill_password,
)
from backupd.sources.mysql.config import MySQLJob
from backupd.store.backups import StoredBackup
from backupd.store.segments import SegmentStore


class MySQLSource(Source[MySQLJob], PointInTime[MySQLJob]):
    type = "mysql"
    model = MySQLJob
    restore_options = (PASSWORD_FILE_OPTION, DATABASE_OPTION)

    def check_reachable(self, job: MySQLJob) -> list[str]:
        from backupd.sources.mysql.client import reach_mysql

        return reach_mysql(job, job.ssh)

    def dump(self, job: MySQLJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.mysql.dump import dump_part, host_label

        return {"host": host_label(job, job.ssh), "databases": dump_part(ctx, job, job.ssh)}

    def check_restore(self, job: MySQLJob, req: RestoreRequest) -> None:
        from backupd.sources.mysql.client import parse_mysql_uri

        if not req.to:
            raise UsageError("restore: a mysql job needs --to URI")
        parse_mysql_uri(req.to)

    def restore(self, job: MySQLJob, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        from backupd.sources.mysql.client import parse_mysql_uri, restore_sql_artifacts

        target = parse_mysql_uri(req.to or "")
        only = req.option("database")
        return restore_sql_artifacts(backup, target, req.password(), only=only, yes=req.yes, progress=progress)

    def drill(self, job: MySQLJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.mysql.drill import drill_sql

        return drill_sql(job.drill.target, drill_password(job.password_file), backup, ctx)

    # -- point-in-time recovery (docs/pitr.md)
    def pitr_enabled(self, job: MySQLJob) -> bool:
        return job.pitr.enabled

    def check_pitr(self, job: MySQLJob) -> list[str]:
        from backupd.sources.mysql.stream import check_pitr_part

        return check_pitr_part(job, job.ssh)

    def stream(self, job: MySQLJob, ctx: StreamContext) -> None:
        from backupd.sources.mysql.stream import stream_part

        stream_part(job, job.ssh, ctx)

    def restore_until(
        self, job: MySQLJob, backups: list[StoredBackup], segments: SegmentStore, req: RestoreRequest,
        progress: Progress,
    ) -> list[Restored]:
        raise UsageError("restore --until: not implemented yet")

    def pitr_drill(
        self, job: MySQLJob, backups: list[StoredBackup], segments: SegmentStore, ctx: DrillContext
    ) -> DrillResult:
        raise UsageError("pitr drill: not implemented yet")
