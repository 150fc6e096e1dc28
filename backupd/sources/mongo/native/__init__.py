"""The native MongoDB engine: dump to, and restore from, the mongodump archive format with pymongo alone.

Backups must not depend on the MongoDB Database Tools being installed, so this engine reads every
collection as raw BSON (documents are never decoded, so every type survives byte for byte) and writes
them through `ArchiveWriter`, whose output the real mongorestore and our own checker both accept. The
restore reads archives from either engine (or a real mongodump) through the same checker, so a broken
archive stops the restore instead of loading garbage. Memory stays constant: one cursor batch on the
way out, one insert batch on the way in, the oplog spooled to an unlinked temp file.

The package: `connection` (URIs, clients, one-line errors, server facts), `namespaces` (filters and renames),
`dump` (`dump_native` and the oplog window), `restore` (`restore_archive`) and `replay` (applying the oplog).
"""

from __future__ import annotations

from backupd.sources.mongo.native.connection import (
    DEFAULT_BATCH,
    SKIP_DBS,
    Client,
    ServerInfo,
    connect,
    direct_uri,
    explain,
    host_label,
    mongo_step,
    pin_member,
    server_info,
    strip_credentials,
)
from backupd.sources.mongo.native.dump import (
    TOOL_VERSION,
    CollSpec,
    DumpStats,
    OplogError,
    OplogSource,
    check_window,
    dump_native,
    list_specs,
    oplog_query,
    oplog_start,
    ts_fact,
)
from backupd.sources.mongo.native.namespaces import NsFilter, NsRenamer, ns_pattern, split_ns
from backupd.sources.mongo.native.replay import OplogApplyError, apply_op, diff_to_updates, replay_oplog
from backupd.sources.mongo.native.restore import restore_archive

__all__ = [
    "DEFAULT_BATCH",
    "SKIP_DBS",
    "TOOL_VERSION",
    "Client",
    "CollSpec",
    "DumpStats",
    "NsFilter",
    "NsRenamer",
    "OplogApplyError",
    "OplogError",
    "OplogSource",
    "ServerInfo",
    "apply_op",
    "check_window",
    "connect",
    "diff_to_updates",
    "direct_uri",
    "dump_native",
    "explain",
    "host_label",
    "list_specs",
    "mongo_step",
    "ns_pattern",
    "oplog_query",
    "oplog_start",
    "pin_member",
    "replay_oplog",
    "restore_archive",
    "server_info",
    "split_ns",
    "strip_credentials",
    "ts_fact",
]
