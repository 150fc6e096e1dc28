"""The replication protocol: connect as a replica (pymysql), ask for the binlog from a position, read events.

Why our own COM_BINLOG_DUMP rather than `mariadb-binlog --read-from-remote-server --raw --stop-never`: that
tool appends to whole files named like the server's and never fsyncs, so it cannot cut segments at
transaction boundaries, and the password would have to reach it through an option file anyway. Here the
password goes to pymysql in memory only. For `via_ssh` jobs the connection runs through a `direct-tcpip`
channel of the job's SSH connection (no local port is opened).

The server sends, per binlog file: a fake Rotate (name of the file), its Format_description, then events;
with `@mariadb_slave_capability = 4` GTID and GTID list events come as they are. Heartbeats
(`@master_heartbeat_period`) arrive when the server is idle: they carry the server's current position, so an
idle stream still closes segments on time and a dead link is noticed (the read timeout).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymysql
import pymysql.err

from backupd.errors import StepError
from backupd.settings import SSHCfg
from backupd.sources.mysql.config import MySQLPart
from backupd.store.segments import BinlogPos

if TYPE_CHECKING:
    import paramiko

COM_BINLOG_DUMP = 0x12
ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236  # the binlog asked for is gone (purged) or the position is bad
CONNECT_TIMEOUT = 15
RECV = 1 << 20
TRICKLE = 16 << 10  # a receive smaller than this: the stream is caught up with the server
COALESCE = 0.02  # then wait this long before the next receive (segments are minutes; 20 ms is nothing)


class LinkError(Exception):
    """The connection to the server failed or dropped: reconnect with backoff and resume."""


class BinlogUnavailable(Exception):
    """The server cannot send the binlog from the position asked for (error 1236): a gap, never retried as is."""


@dataclass(frozen=True)
class ServerFacts:
    version: str
    mariadb: bool
    variables: dict[str, str]

    def var(self, name: str, default: str = "") -> str:
        return self.variables.get(name, default)


def _mysql_error(exc: BaseException) -> tuple[int, str]:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return 0, str(exc)


class ReplicationConnection:
    """One pymysql connection used as a replica: a few queries, then `dump()` and `read_event()`."""

    def __init__(self, conn: pymysql.connections.Connection[Any], label: str, stack: ExitStack) -> None:
        self._conn = conn
        self.label = label
        self._stack = stack
        self.dumping = False

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        except pymysql.err.OperationalError as exc:
            code, msg = _mysql_error(exc)
            if code >= 2000:  # client-side: lost connection, gone away
                raise LinkError(f"{self.label}: {msg}") from None
            raise
        except OSError as exc:
            raise LinkError(f"{self.label}: {exc}") from None

    def facts(self) -> ServerFacts:
        names = (
            "version", "log_bin", "binlog_format", "binlog_checksum", "binlog_expire_logs_seconds",
            "expire_logs_days", "server_id", "gtid_binlog_pos", "gtid_domain_id", "log_bin_basename",
            "log_bin_compress",
        )
        quoted = ",".join(f"'{n}'" for n in names)
        sql = "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME IN "
        rows = self.query(sql + f"({quoted.upper()})")
        variables = {str(k).lower(): "" if v is None else str(v) for k, v in rows}
        version = variables.get("version") or str(self.query("SELECT VERSION()")[0][0])
        return ServerFacts(version, "mariadb" in version.lower(), variables)

    def grants(self) -> list[str]:
        return [str(r[0]) for r in self.query("SHOW GRANTS FOR CURRENT_USER()")]

    def binary_logs(self) -> list[tuple[str, int]]:
        """The server's binlog files, oldest first, with their sizes."""
        return [(str(r[0]), int(r[1])) for r in self.query("SHOW BINARY LOGS")]

    def current_position(self) -> BinlogPos | None:
        rows = self.query("SHOW MASTER STATUS")
        return BinlogPos(str(rows[0][0]), int(rows[0][1])) if rows else None

    def dump(self, start: BinlogPos, server_id: int, heartbeat: float) -> None:
        """Ask for the binlog from `start`; afterwards only `read_event` may be called."""
        self.query("SET @master_binlog_checksum = @@global.binlog_checksum")
        self.query("SET @mariadb_slave_capability = 4")  # GTID events and lists as they are
        self.query(f"SET @master_heartbeat_period = {int(heartbeat * 1e9)}")
        payload = struct.pack("<IHI", start.pos, 0, server_id) + start.file.encode()
        try:
            self._conn._execute_command(COM_BINLOG_DUMP, payload)  # type: ignore[attr-defined]
        except (pymysql.err.OperationalError, OSError) as exc:
            raise LinkError(f"{self.label}: {_mysql_error(exc)[1]}") from None
        self.dumping = True
        self._sock = self._conn._sock  # type: ignore[attr-defined]  # (a socket, or the SSH channel)
        self._buf = bytearray()
        self._off = 0
        self._trickle = False

    def read_event(self) -> bytes | None:
        """The next raw event (header, body, CRC), or None when the server ended the stream (EOF).

        Packets are cut from our own receive buffer (4-byte header, then the payload; a payload of 0xFFFFFF
        bytes continues in the next packet): one recv takes a whole burst of events, and pymysql's
        per-packet reads and objects cost more than the rest of the stream's work per event."""
        try:
            data = self._read_payload()
        except OSError as exc:
            raise LinkError(f"{self.label}: {exc}") from None
        first = data[:1]
        if first == b"\x00":
            return data[1:]
        if first == b"\xfe" and len(data) < 9:
            return None
        if first == b"\xff":
            code = struct.unpack_from("<H", data, 1)[0] if len(data) >= 3 else 0
            msg = data[9:] if data[3:4] == b"#" else data[3:]
            text = msg.decode("utf-8", "replace")
            if code == ER_MASTER_FATAL_ERROR_READING_BINLOG:
                raise BinlogUnavailable(text)
            raise LinkError(f"{self.label}: {text} (error {code})")
        raise LinkError(f"{self.label}: unexpected replication packet 0x{first.hex()}")

    def _fill(self, need: int) -> None:
        """Receive until the buffer holds `need` bytes past the read offset (one recv takes what is there)."""
        buf = self._buf
        if self._off > 1 << 16:  # drop what was consumed, now and then
            del buf[: self._off]
            self._off = 0
        while len(buf) - self._off < need:
            if self._trickle:  # caught up: let a few events gather rather than wake for each one
                time.sleep(COALESCE)
            data = self._sock.recv(RECV)
            if not data:
                raise LinkError(f"{self.label}: the server closed the connection")
            buf += data
            self._trickle = len(data) < TRICKLE

    def _read_payload(self) -> bytes:
        parts: list[bytes] = []
        while True:
            self._fill(4)
            off = self._off
            buf = self._buf
            length = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16
            self._fill(4 + length)
            off = self._off
            payload = bytes(self._buf[off + 4 : off + 4 + length])
            self._off = off + 4 + length
            if length < 0xFFFFFF and not parts:
                return payload
            parts.append(payload)
            if length < 0xFFFFFF:
                return b"".join(parts)

    def close(self) -> None:
        self._stack.close()


def _open_channel(ssh_conn: Any, part: MySQLPart, label: str) -> paramiko.Channel:
    import paramiko  # only via_ssh jobs pay for the SSH stack (about 11 MB of the stream's RSS)

    transport = ssh_conn.client.get_transport()
    if transport is None:  # pragma: no cover - connect() opened it
        raise StepError("stream connect", "SSH transport closed", host=label)
    try:
        chan: paramiko.Channel = transport.open_channel("direct-tcpip", (part.host, part.port), ("127.0.0.1", 0),
                                      timeout=CONNECT_TIMEOUT)
        return chan
    except (paramiko.ChannelException, paramiko.SSHException, OSError) as exc:
        raise LinkError(f"{label}: the SSH host cannot reach {part.host}:{part.port} ({exc})") from None


@contextmanager
def replication_connection(
    part: MySQLPart, password: str | None, ssh: SSHCfg | None, read_timeout: float = 60.0
) -> Iterator[ReplicationConnection]:
    """A connection to the job's server: direct over TCP, or through the SSH host for `via_ssh` jobs.

    Raises LinkError when the server cannot be reached (worth retrying), StepError for an SSH refusal and
    pymysql's OperationalError for a refused login (not worth retrying)."""
    stack = ExitStack()
    label = f"{part.host}:{part.port}"
    try:
        sock: Any = None
        if part.via_ssh and ssh is not None:
            from backupd.engine.remote import connect  # fabric and paramiko: via_ssh jobs only

            label = f"{ssh.label} ({label} via ssh)"
            ssh_conn = stack.enter_context(connect(ssh))
            sock = _open_channel(ssh_conn, part, label)
            stack.callback(sock.close)
        conn = pymysql.connections.Connection(
            host=part.host,
            port=part.port,
            user=part.user,
            password=password or "",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
            defer_connect=True,
        )
        try:
            conn.connect(sock)
        except pymysql.err.OperationalError as exc:
            code, msg = _mysql_error(exc)
            if code >= 2000:
                raise LinkError(f"{label}: {msg}") from None
            raise
        except OSError as exc:
            raise LinkError(f"{label}: {exc}") from None
        stack.callback(_close_quietly, conn)
    except BaseException:
        stack.close()
        raise
    rc = ReplicationConnection(conn, label, stack)
    try:
        yield rc
    finally:
        rc.close()


def _close_quietly(conn: pymysql.connections.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:  # already broken: nothing left to close cleanly
        conn._force_close()  # type: ignore[attr-defined]
