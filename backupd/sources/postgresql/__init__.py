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
from backupd.sources.postgresql.config import PostgresJob
from backupd.store.backups import StoredBackup


class PostgresSource(Source[PostgresJob]):
    type = "postgresql"
    model = PostgresJob
    restore_options = (PASSWORD_FILE_OPTION, DATABASE_OPTION)

    def check_reachable(self, job: PostgresJob) -> list[str]:
        from backupd.sources.postgresql.dump import reach_postgres

        return reach_postgres(job)

    def dump(self, job: PostgresJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.postgresql.dump import dump_postgres

        return dump_postgres(job, ctx)

    def check_restore(self, job: PostgresJob, req: RestoreRequest) -> None:
        from backupd.sources.postgresql.client import parse_pg_uri

        if not req.to:
            raise UsageError("restore: a postgresql job needs --to postgresql://user@host:port/[database]")
        parse_pg_uri(req.to)

    def restore(
        self, job: PostgresJob, backup: StoredBackup, req: RestoreRequest, progress: Progress
    ) -> list[Restored]:
        from backupd.sources.postgresql.client import local_runner, parse_pg_uri
        from backupd.sources.postgresql.restore import PgServerSession, plan_restore, restore_databases

        target = parse_pg_uri(req.to or "")
        plan = plan_restore(backup, target, req.option("database"))
        with local_runner(target.label, target.host, target.port, target.user, req.password()) as runner:
            session = PgServerSession(target, runner)
            return restore_databases(session, backup, plan, yes=req.yes, progress=progress)

    def drill(self, job: PostgresJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.postgresql.drill import drill_postgres

        return drill_postgres(job, backup, ctx)
