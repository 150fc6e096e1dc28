"""Point-in-time recovery for MariaDB, the stream side: the server's checks, the replication client, segments.

Entry points for the sources (MySQL and WordPress share them through their MySQL part):
`check_pitr_part(part, ssh)` and `stream_part(part, ssh, ctx)`. How it works: docs/pitr.md.
"""

from __future__ import annotations

from backupd.settings import SSHCfg
from backupd.sources.base import StreamContext
from backupd.sources.mysql.config import MySQLPart
from backupd.sources.mysql.stream.checks import check_pitr_part
from backupd.sources.mysql.stream.streamer import BinlogStream

__all__ = ["check_pitr_part", "stream_part"]


def stream_part(part: MySQLPart, ssh: SSHCfg | None, ctx: StreamContext) -> None:
    """Stream the part's server binlog into `ctx.segments` until `ctx.stop` is set."""
    BinlogStream(part, ssh, ctx).run()
