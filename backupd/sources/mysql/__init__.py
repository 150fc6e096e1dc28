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
from backupd.sources.mysql.client import parse_mysql_uri, reach_mysql, restore_sql_artifacts
from backupd.sources.mysql.config import MySQLJob
from backupd.sources.mysql.drill import drill_sql
from backupd.sources.mysql.dump import dump_part, host_label
from backupd.sources.mysql.pitr import UNTIL_OPTION, pitr_drill_sql, prepare_until, restore_until_sql
from backupd.store.backups import StoredBackup
from backupd.store.segments import SegmentStore


class MySQLSource(Source[MySQLJob], PointInTime[MySQLJob]):
    type = "mysql"
    model = MySQLJob
    restore_options = (PASSWORD_FILE_OPTION, DATABASE_OPTION, UNTIL_OPTION)

    def check_reachable(self, job: MySQLJob) -> list[str]:
        return reach_mysql(job, job.ssh)

    def dump(self, job: MySQLJob, ctx: DumpContext) -> dict[str, Any]:
        return {"host": host_label(job, job.ssh), "databases": dump_part(ctx, job, job.ssh)}

    def check_restore(self, job: MySQLJob, req: RestoreRequest) -> None:
        if not req.to:
            raise UsageError("restore: a mysql job needs --to URI")
        parse_mysql_uri(req.to)

    def restore(self, job: MySQLJob, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        target = parse_mysql_uri(req.to or "")
        only = req.option("database")
        return restore_sql_artifacts(backup, target, req.password(), only=only, yes=req.yes, progress=progress)

    def drill(self, job: MySQLJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        return drill_sql(job.drill.target, drill_password(job.password_file), backup, ctx)

    # ---------------------------------------------------------------- point in time (docs/pitr.md)

    def pitr_enabled(self, job: MySQLJob) -> bool:
        return job.pitr.enabled

    def pitr_window(self, job: MySQLJob) -> float:
        return float(job.pitr.window)

    def check_pitr(self, job: MySQLJob) -> list[str]:  # the stream's side: not on this branch
        raise UsageError("pitr: the server checks are not built yet")

    def stream(self, job: MySQLJob, ctx: StreamContext) -> None:  # the stream's side: not on this branch
        raise UsageError("stream: not built yet")

    def restore_until(
        self, job: MySQLJob, backups: list[StoredBackup], segments: SegmentStore, req: RestoreRequest,
        progress: Progress,
    ) -> list[Restored]:  # fmt: skip
        return restore_until_sql(prepare_until(backups, segments, req), req, progress)

    def pitr_drill(
        self, job: MySQLJob, backups: list[StoredBackup], segments: SegmentStore, ctx: DrillContext
    ) -> DrillResult:
        return pitr_drill_sql(job.drill.target, drill_password(job.password_file), backups, segments, ctx)
