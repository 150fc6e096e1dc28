"""mongodump ``--archive`` format: streaming verifier, writer and reader (docs/formats.md).

The checker applies the rules mongorestore applies while demultiplexing (framing, per-namespace
CRC-64/XZ at each EOF block, every prelude namespace closed) without decoding documents: a backup of
many GB is verified at close to disk speed, and a truncated or corrupted archive is caught before it is
committed. The writer produces the same byte layout as mongodump's multiplexer, so archives made by the
native engine restore with the real mongorestore and pass the same checker.

The package: `frames` (magic, terminator, BSON length rules, CRC, namespaces, prelude types), `checker`
(`MongoArchiveChecker`), `describe` (what `backupd inspect` prints), `writer` (`ArchiveWriter`) and `reader`
(`open_archive`, `iter_archive`). The names below are the ones importers use.
"""

from __future__ import annotations

from backupd.formats.mongo_archive.checker import MongoArchiveChecker
from backupd.formats.mongo_archive.describe import describe
from backupd.formats.mongo_archive.frames import (
    MAGIC,
    MAX_BSON,
    MIN_BSON,
    OPLOG_KEY,
    TERMINATOR,
    ArchiveError,
    BinaryReader,
    BinaryWriter,
    Namespace,
    Prelude,
    PreludeEntry,
    crc64_xz,
    sniff,
)
from backupd.formats.mongo_archive.reader import iter_archive, open_archive
from backupd.formats.mongo_archive.writer import ArchiveWriter, metadata_json

__all__ = [
    "MAGIC",
    "MAX_BSON",
    "MIN_BSON",
    "OPLOG_KEY",
    "TERMINATOR",
    "ArchiveError",
    "ArchiveWriter",
    "BinaryReader",
    "BinaryWriter",
    "MongoArchiveChecker",
    "Namespace",
    "Prelude",
    "PreludeEntry",
    "crc64_xz",
    "describe",
    "iter_archive",
    "metadata_json",
    "open_archive",
    "sniff",
]
