"""Which checker reads which format, and format detection from the first bytes of a stream."""

from __future__ import annotations

import importlib
from typing import Any

from backupd.formats.base import CheckResult, FormatChecker

# format name -> (module, checker class); detection order matters: binary magics before text
FORMATS: dict[str, tuple[str, str]] = {
    "mongo-archive": ("backupd.formats.mongo_archive", "MongoArchiveChecker"),
    "redis-rdb": ("backupd.formats.rdb", "RdbChecker"),
    "binlog": ("backupd.formats.binlog", "BinlogChecker"),
    "pg-custom": ("backupd.formats.pgdump", "PgCustomChecker"),
    "tar": ("backupd.formats.tarball", "TarChecker"),
    "sql-dump": ("backupd.formats.sqldump", "SqlDumpChecker"),
    "pg-plain": ("backupd.formats.pgdump", "PgPlainChecker"),
    "pg-globals": ("backupd.formats.pgglobals", "PgGlobalsChecker"),
}
SNIFF_BYTES = 4096
# format name -> its module's sniff function, when that is not `sniff` (two formats in one module)
SNIFFERS: dict[str, str] = {"pg-plain": "sniff_plain"}


def _module(fmt: str) -> Any:
    try:
        return importlib.import_module(FORMATS[fmt][0])
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}") from None


def checker_for(fmt: str) -> FormatChecker:
    cls = getattr(_module(fmt), FORMATS[fmt][1])
    checker: FormatChecker = cls()
    return checker


def sniff(head: bytes) -> str | None:
    for fmt in FORMATS:
        try:
            mod = _module(fmt)
        except ImportError:
            continue
        if getattr(mod, SNIFFERS.get(fmt, "sniff"))(head):
            return fmt
    return None


def describe(fmt: str, result: CheckResult) -> list[str]:
    lines: list[str] = _module(fmt).describe(result)
    return lines
