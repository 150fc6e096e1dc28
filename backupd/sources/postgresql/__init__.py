"""PostgreSQL: the cluster's globals and one pg_dump artifact per database; restores and drills through
pg_restore / psql (docs/sources.md#postgresql)."""

from __future__ import annotations

from typing import Any

from backupd.errors import UsageError
from backupd.sources.base import (
    DATABASE_OPTION,
    PASSWORD_FILE_OPTION,
    DrillContext,
    DrillResult,
    DumpContext,
    Progress,
    Restored,
    RestoreRequest,
    Source,
)
from backupd.sources.postgresql.client import local_runner, parse_pg_uri
from backupd.sources.postgresql.config import PostgresJob
from backupd.sources.postgresql.drill import drill_postgres
from backupd.sources.postgresql.dump import dump_postgres, reach_postgres
from backupd.sources.postgresql.restore import PgServerSession, plan_restore, restore_databases
from backupd.store.backups import StoredBackup


class PostgresSource(Source[PostgresJob]):
    type = "postgresql"
    model = PostgresJob
    restore_options = (PASSWORD_FILE_OPTION, DATABASE_OPTION)

    def check_reachable(self, job: PostgresJob) -> list[str]:
        return reach_postgres(job)

    def dump(self, job: PostgresJob, ctx: DumpContext) -> dict[str, Any]:
        return dump_postgres(job, ctx)

    def check_restore(self, job: PostgresJob, req: RestoreRequest) -> None:
        if not req.to:
            raise UsageError("restore: a postgresql job needs --to postgresql://user@host:port/[database]")
        parse_pg_uri(req.to)

    def restore(
        self, job: PostgresJob, backup: StoredBackup, req: RestoreRequest, progress: Progress
    ) -> list[Restored]:
        target = parse_pg_uri(req.to or "")
        plan = plan_restore(backup, target, req.option("database"))
        with local_runner(target.label, target.host, target.port, target.user, req.password()) as runner:
            session = PgServerSession(target, runner)
            return restore_databases(session, backup, plan, yes=req.yes, progress=progress)

    def drill(self, job: PostgresJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        return drill_postgres(job, backup, ctx)
