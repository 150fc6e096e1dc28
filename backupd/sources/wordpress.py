"""WordPress: the site's database and its files in one backup with two artifacts."""

from __future__ import annotations

from typing import Any

from backupd.config import WordPressJob
from backupd.sources import DumpContext
from backupd.sources.files import sync
from backupd.sources.mysql import dump_part


def check(job: WordPressJob, ctx: DumpContext) -> None:
    """Reachability is proven by the dump and the rsync."""


def dump(job: WordPressJob, ctx: DumpContext) -> dict[str, Any]:
    databases = dump_part(ctx, job.mysql, job.ssh)
    files = sync(ctx, job.files, job.ssh)
    return {"databases": databases, "files": files}
