"""The sources and their registry: the only list of job types (docs/architecture.md).

Adding a source is one module (or package) with a `Source` subclass, plus one line in `SOURCES` below;
the config's `type` values, its error messages and the restore options the CLI offers all come from here.
"""

from __future__ import annotations

from typing import Any

from backupd.settings import JobBase
from backupd.sources.base import RestoreOption, Source
from backupd.sources.files import FilesSource
from backupd.sources.mongo import MongoSource
from backupd.sources.mysql import MySQLSource
from backupd.sources.postgresql import PostgresSource
from backupd.sources.redis import RedisSource
from backupd.sources.wordpress import WordPressSource

SOURCES: tuple[Source[Any], ...] = (
    MongoSource(),
    RedisSource(),
    MySQLSource(),
    PostgresSource(),
    FilesSource(),
    WordPressSource(),
)
_BY_TYPE = {s.type: s for s in SOURCES}


def source_types() -> list[str]:
    return [s.type for s in SOURCES]


def job_models() -> tuple[type[JobBase], ...]:
    return tuple(s.model for s in SOURCES)


def source_for(job: JobBase) -> Source[Any]:
    return _BY_TYPE[job.type]


def restore_options() -> list[RestoreOption]:
    """Every source's restore options, once each (several sources share `--password-file`, say)."""
    seen: dict[str, RestoreOption] = {}
    for s in SOURCES:
        for opt in s.restore_options:
            seen.setdefault(opt.dest, opt)
    return list(seen.values())


def option_owners(dest: str) -> list[str]:
    """The job types whose restore takes the option `dest`."""
    return [s.type for s in SOURCES if any(o.dest == dest for o in s.restore_options)]
