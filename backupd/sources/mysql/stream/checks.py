"""The server's side of PITR, checked at `check-config --connect` and before a stream starts (docs/pitr.md)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pymysql.err

from backupd.errors import StepError
from backupd.humanize import human_age
from backupd.settings import SSHCfg, read_secret
from backupd.sources.mysql.config import MySQLPart
from backupd.sources.mysql.stream.replication import (
    LinkError,
    ReplicationConnection,
    ServerFacts,
    replication_connection,
)

STEP = "pitr check"
EXPIRY_WARN_SECONDS = 86400  # a stream stopped over a night or a weekend must not lose its place
_GRANT_RE = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)


def global_privileges(grants: list[str]) -> set[str]:
    """The privileges granted ON *.* in `SHOW GRANTS` lines (upper case); ALL PRIVILEGES stays as is."""
    out: set[str] = set()
    for line in grants:
        m = _GRANT_RE.match(line)
        if m and m.group(2).replace("`", "") == "*.*":
            out |= {p.strip().upper() for p in m.group(1).split(",")}
    return out


def expiry_seconds(facts: ServerFacts) -> int:
    """The server's binlog expiry in seconds (0 = never); binlog_expire_logs_seconds wins where it is set."""
    secs = facts.var("binlog_expire_logs_seconds")
    if secs and secs.isdigit() and int(secs) > 0:
        return int(secs)
    days = facts.var("expire_logs_days")
    try:
        return int(float(days) * 86400) if days else 0
    except ValueError:
        return 0


def check_server(conn: ReplicationConnection, facts: ServerFacts) -> list[str]:
    """Each rule a clear line: StepError at the first that rules streaming out, warnings prefixed."""
    return check_facts(facts, conn.grants, conn.label)


def check_facts(facts: ServerFacts, grants: Callable[[], list[str]], host: str) -> list[str]:
    """The rules over what the server said (`grants` is only asked once the server itself qualifies)."""

    def refuse(msg: str) -> StepError:
        return StepError(STEP, msg, host=host)

    if not facts.mariadb:
        raise refuse(f"server {facts.version} is MySQL: pitr supports MariaDB only for now")
    if facts.var("log_bin").upper() != "ON":
        raise refuse("log_bin is OFF: start the server with --log-bin (binary logging) to stream its binlog")
    fmt = facts.var("binlog_format").upper()
    if fmt != "ROW":
        raise refuse(
            f"binlog_format is {fmt or 'unknown'}, pitr needs ROW: statement events replay differently from"
            " what the server did (non-deterministic functions, the default database), so a restore to an"
            " instant or under another database name could not be exact; set binlog_format=ROW"
        )
    if facts.var("binlog_checksum").upper() in ("", "NONE"):
        raise refuse("binlog_checksum is NONE: set binlog_checksum=CRC32 so every streamed event can be checked")
    if facts.var("log_bin_compress").upper() == "ON":
        raise refuse(
            "log_bin_compress is ON: pitr reads each statement of the binlog to refuse DDL a restore cannot"
            " rewrite, and compressed events hide it; set log_bin_compress=OFF"
        )
    privs = global_privileges(grants())
    has_all = "ALL PRIVILEGES" in privs or "ALL" in privs
    missing = [p for p, alts in (("REPLICATION SLAVE", ("REPLICATION SLAVE", "REPLICATION REPLICA")),
                                 ("BINLOG MONITOR", ("BINLOG MONITOR", "REPLICATION CLIENT")))
               if not has_all and not privs & set(alts)]
    if missing:
        raise refuse(f"user lacks {' and '.join(missing)} ON *.*: GRANT {', '.join(missing)} ON *.* TO the job's user")
    lines = [f"pitr {host}: MariaDB {facts.version.split('-')[0]}, ROW binlog, {facts.var('binlog_checksum')}"]
    expiry = expiry_seconds(facts)
    if expiry == 0:
        lines.append(f"pitr {host}: the server never expires its binlog (a stopped stream catches up; watch its disk)")
    elif expiry < EXPIRY_WARN_SECONDS:
        lines.append(
            f"warning: pitr {host}: the server expires its binlog after {human_age(expiry)}: a stream stopped"
            " longer than that loses binlog it never read (a gap; the window restarts at the next base backup)"
        )
    else:
        lines.append(f"pitr {host}: binlog kept {human_age(expiry)}; a stream stopped longer than that leaves a gap")
    return lines


def check_pitr_part(part: MySQLPart, ssh: SSHCfg | None) -> list[str]:
    """`check_pitr` of the MySQL and WordPress sources: connect as the stream would and check the server."""
    label = f"{part.host}:{part.port}"
    try:
        with replication_connection(part, read_secret(part.password_file), ssh) as conn:
            return check_server(conn, conn.facts())
    except LinkError as exc:
        raise StepError(STEP, f"cannot reach the server: {exc}", host=label) from None
    except pymysql.err.MySQLError as exc:
        msg = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise StepError(STEP, str(msg), host=label) from None
