"""MongoDB: one `mongo.archive` per backup, by mongodump or the native pymongo engine; restores by the native
restorer or mongorestore; drills into a scratch server or under renamed databases on a `[drill] target`."""

from __future__ import annotations

import time
from typing import Any

from backupd.errors import UsageError
from backupd.sources.base import (
    PASSWORD_FILE_OPTION,
    DrillContext,
    DrillResult,
    DumpContext,
    Progress,
    Restored,
    RestoreOption,
    RestoreRequest,
    Source,
    artifacts,
)
from backupd.sources.mongo.config import MongoJob
from backupd.store.backups import StoredBackup


class MongoSource(Source[MongoJob]):
    type = "mongodb"
    model = MongoJob
    restore_options = (
        PASSWORD_FILE_OPTION,
        RestoreOption("--ns-from", "ns_from", "mongodb: as mongorestore --nsFrom", "PAT", "append"),
        RestoreOption("--ns-to", "ns_to", "mongodb: as mongorestore --nsTo", "PAT", "append"),
        RestoreOption(
            "--oplog-replay", "oplog_replay", "mongodb: apply the captured oplog after the data", None, "store_true"
        ),
        RestoreOption(
            "--mongorestore", "mongorestore", "mongodb: let mongorestore do the work (installed)", None, "store_true"
        ),
    )

    def check_reachable(self, job: MongoJob) -> list[str]:
        from backupd.sources.mongo.tools import reach_mongo

        return [reach_mongo(job)]

    def dump(self, job: MongoJob, ctx: DumpContext) -> dict[str, Any]:
        from backupd.sources.mongo.tools import dump_archive

        return dump_archive(job, ctx)

    def check_restore(self, job: MongoJob, req: RestoreRequest) -> None:
        if not req.to:
            raise UsageError("restore: a mongodb job needs --to URI")
        if len(req.option("ns_from", [])) != len(req.option("ns_to", [])):
            raise UsageError("restore: give --ns-from and --ns-to in pairs (the same number of each)")

    def restore(self, job: MongoJob, backup: StoredBackup, req: RestoreRequest, progress: Progress) -> list[Restored]:
        from backupd.sources.mongo.drill import MongoOptions, mongo_restore

        options = MongoOptions(
            tuple(req.option("ns_from", [])),
            tuple(req.option("ns_to", [])),
            bool(req.option("oplog_replay")),
            "mongorestore" if req.option("mongorestore") else "native",
        )
        done = []
        for art in artifacts(backup, "mongo-archive"):
            began = time.monotonic()
            path = backup.path / art["file"]
            counts = mongo_restore(path, req.to or "", drop=req.yes, password=req.password(), options=options)
            done.append(Restored(art["file"], req.to or "", counts, time.monotonic() - began))
        return done

    def drill(self, job: MongoJob, backup: StoredBackup, ctx: DrillContext) -> DrillResult:
        from backupd.sources.mongo.drill import drill_mongo

        return drill_mongo(job, backup, ctx)
