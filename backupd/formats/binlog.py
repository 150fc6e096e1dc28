"""MariaDB binlog events: split a byte stream into events, check each CRC32, group them into transactions.

Used by the PITR stream (cut segments at transaction boundaries, check every event before committing), by
restore to a point (pick whole transactions up to an instant) and as the format check of a segment file.
What is checked and why: docs/formats.md ("MariaDB binlog"). All integers are little-endian.

Times: GTID and XID events are written at commit and carry the COMMIT's time; row events carry their
statement's start time, so event times are not monotonic. A transaction's time here is its commit time
(the XID/COMMIT event's timestamp), which is what "the state at instant T" means.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from backupd.formats.base import CheckResult, FormatChecker

MAGIC = b"\xfebin"
HEADER_LEN = 19
CRC_LEN = 4
MAX_EVENT = 1 << 30  # max_allowed_packet's ceiling; anything larger is a corrupt length field
_HEADER = struct.Struct("<IBIIIH")

QUERY = 2
STOP = 3
ROTATE = 4
FORMAT_DESCRIPTION = 15
XID = 16
TABLE_MAP = 19
HEARTBEAT = 27
XA_PREPARE = 38
ANNOTATE_ROWS = 160
BINLOG_CHECKPOINT = 161
GTID = 162
GTID_LIST = 163
START_ENCRYPTION = 164
QUERY_COMPRESSED = 165

FLAG_IN_USE = 0x1
FLAG_ARTIFICIAL = 0x20
GTID_STANDALONE = 0x1
GTID_GROUP_COMMIT_ID = 0x2
GTID_DDL = 0x20

# events outside any transaction: they carry no data to replay
CONTROL_EVENTS = {STOP, ROTATE, FORMAT_DESCRIPTION, HEARTBEAT, BINLOG_CHECKPOINT, GTID_LIST, START_ENCRYPTION}
_TX_WORDS = (b"BEGIN", b"COMMIT", b"ROLLBACK", b"SAVEPOINT", b"XA ")


class BinlogError(ValueError):
    """A structural problem in binlog bytes (bad magic, length, CRC, a torn or misplaced event)."""


class Event(NamedTuple):
    """One event. A named tuple, not a dataclass: a restore's first pass and the stream's segment check make
    one per event (millions an hour), and a tuple is built in a quarter of the time of a frozen dataclass."""

    timestamp: int
    type: int
    server_id: int
    length: int
    next_pos: int  # log_pos: the end offset of this event in the origin binlog (0 for fake events)
    flags: int
    raw: bytes  # the whole event: header, body and CRC (if any)
    checksum: bool  # the event carries a trailing CRC32

    @property
    def body(self) -> bytes:
        end = len(self.raw) - (CRC_LEN if self.checksum or self.type == FORMAT_DESCRIPTION else 0)
        return self.raw[HEADER_LEN:end]

    @property
    def artificial(self) -> bool:
        return bool(self.flags & FLAG_ARTIFICIAL) or (self.timestamp == 0 and self.type == ROTATE)


def parse_header(buf: bytes) -> tuple[int, int, int, int, int, int]:
    """(timestamp, type, server_id, length, next_pos, flags) of the 19 bytes at the start of `buf`."""
    ts, typ, sid, length, next_pos, flags = _HEADER.unpack_from(buf)
    return int(ts), int(typ), int(sid), int(length), int(next_pos), int(flags)


def crc_ok(raw: bytes) -> bool:
    """zlib CRC32 over the event minus its last 4 bytes; a Format_description is summed with IN_USE clear."""
    stored: int = struct.unpack_from("<I", raw, len(raw) - CRC_LEN)[0]
    if raw[4] == FORMAT_DESCRIPTION and raw[17] & FLAG_IN_USE:
        data = bytearray(raw[:-CRC_LEN])
        data[17] &= ~FLAG_IN_USE & 0xFF
        return zlib.crc32(data) == stored
    return zlib.crc32(raw[:-CRC_LEN]) == stored


def with_crc(data: bytes) -> bytes:
    return data + struct.pack("<I", zlib.crc32(data))


def fde_checksum_alg(raw: bytes) -> int:
    """The Format_description's checksum algorithm byte (0 off, 1 CRC32), just before its 4 CRC bytes."""
    return raw[-CRC_LEN - 1]


def fde_server_version(ev: Event) -> str:
    return ev.body[2:52].split(b"\0", 1)[0].decode("ascii", "replace")


def make_event(raw: bytes, checksum: bool) -> Event:
    """One event from its bytes (a replication packet minus its 0x00 byte, or a slice of a file)."""
    if len(raw) < HEADER_LEN:
        raise BinlogError(f"event of {len(raw)} bytes is shorter than its header")
    ts, typ, sid, length, next_pos, flags = parse_header(raw)
    if length != len(raw):
        raise BinlogError(f"event type {typ} says {length} bytes but holds {len(raw)}")
    has_crc = checksum or typ == FORMAT_DESCRIPTION
    if has_crc and length < HEADER_LEN + CRC_LEN:
        raise BinlogError(f"event type {typ} of {length} bytes has no room for its checksum")
    if (checksum or (typ == FORMAT_DESCRIPTION and fde_checksum_alg(raw) == 1)) and not crc_ok(raw):
        raise BinlogError(f"event type {typ} ending at log position {next_pos}: CRC32 mismatch")
    return Event(ts, typ, sid, length, next_pos, flags, bytes(raw), checksum)


class EventReader:
    """Push-style splitter: `feed(bytes)` returns the whole events completed so far, CRCs checked.

    `expect_magic` for a binlog file (a replication stream has none). The checksum algorithm is taken from
    each Format_description as it passes. `pending` is the torn tail (non-zero at the end = truncated)."""

    def __init__(self, *, expect_magic: bool = True, checksum: bool = False) -> None:
        self._buf = bytearray()
        self._need_magic = expect_magic
        self.checksum = checksum
        self.offset = 0  # bytes consumed (magic included)

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        out: list[Event] = []
        if self._need_magic:
            if len(self._buf) < len(MAGIC):
                return out
            if bytes(self._buf[:4]) != MAGIC:
                raise BinlogError("not a binlog file (bad magic)")
            del self._buf[:4]
            self.offset += 4
            self._need_magic = False
        pos = 0
        buf = self._buf
        size = len(buf)
        unpack = _HEADER.unpack_from
        crc32 = zlib.crc32
        with memoryview(buf) as view:  # make_event's checks, inlined: this loop runs once per event
            while size - pos >= HEADER_LEN:
                ts, typ, sid, length, next_pos, flags = unpack(buf, pos)
                if length < HEADER_LEN or length > MAX_EVENT:
                    raise BinlogError(f"event at offset {self.offset + pos} has an impossible length {length}")
                if size - pos < length:
                    break
                raw = bytes(view[pos : pos + length])
                if typ == FORMAT_DESCRIPTION:
                    self.checksum = fde_checksum_alg(raw) == 1
                    out.append(make_event(raw, self.checksum))
                else:
                    if self.checksum:
                        if length < HEADER_LEN + CRC_LEN:
                            raise BinlogError(f"event type {typ} of {length} bytes has no room for its checksum")
                        if crc32(view[pos : pos + length - CRC_LEN]) != int.from_bytes(raw[-CRC_LEN:], "little"):
                            raise BinlogError(f"event type {typ} ending at log position {next_pos}: CRC32 mismatch")
                    out.append(Event(ts, typ, sid, length, next_pos, flags, raw, self.checksum))
                pos += length
        del buf[:pos]
        self.offset += pos
        return out


# ------------------------------------------------------------------ GTIDs


@dataclass(frozen=True, order=True)
class Gtid:
    domain: int
    server: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Gtid:
        parts = text.strip().split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a GTID (domain-server-seq): {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))


class GtidState:
    """The last GTID per domain: MariaDB's `gtid_binlog_pos` form, "0-1-150,1-2-7"."""

    def __init__(self, gtids: Iterable[Gtid] = ()) -> None:
        self.by_domain: dict[int, Gtid] = {}
        for g in gtids:
            self.apply(g)

    @classmethod
    def parse(cls, text: str | None) -> GtidState:
        return cls(Gtid.parse(p) for p in (text or "").split(",") if p.strip())

    def apply(self, gtid: Gtid) -> None:
        self.by_domain[gtid.domain] = gtid

    def copy(self) -> GtidState:
        return GtidState(self.by_domain.values())

    def includes(self, gtid: Gtid) -> bool:
        """`gtid` is at or before this state in its domain (already applied)."""
        last = self.by_domain.get(gtid.domain)
        return last is not None and gtid.seq <= last.seq

    def gtids(self) -> list[Gtid]:
        return [self.by_domain[d] for d in sorted(self.by_domain)]

    def __str__(self) -> str:
        return ",".join(str(g) for g in self.gtids())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GtidState) and self.by_domain == other.by_domain

    def __hash__(self) -> int:  # pragma: no cover - mutable; defined for completeness
        return hash(str(self))


def parse_gtid(ev: Event) -> tuple[Gtid, int]:
    """(GTID, flags2) of a GTID event; the server id is the event header's."""
    body = ev.body
    if len(body) < 13:
        raise BinlogError("GTID event too short")
    seq, domain, flags2 = struct.unpack_from("<QIB", body)
    return Gtid(domain, ev.server_id, seq), flags2


def parse_gtid_list(ev: Event) -> list[Gtid]:
    body = ev.body
    count = struct.unpack_from("<I", body)[0] & 0x0FFFFFFF
    if len(body) < 4 + 16 * count:
        raise BinlogError("GTID list event too short for its count")
    return [Gtid(*struct.unpack_from("<IIQ", body, 4 + 16 * i)) for i in range(count)]


def make_gtid_list_event(gtids: Iterable[Gtid], *, server_id: int, timestamp: int, next_pos: int) -> bytes:
    """A GTID_LIST event (with CRC32) stating the GTID state at the start of a segment."""
    items = sorted(gtids)
    body = struct.pack("<I", len(items)) + b"".join(struct.pack("<IIQ", g.domain, g.server, g.seq) for g in items)
    length = HEADER_LEN + len(body) + CRC_LEN
    return with_crc(_HEADER.pack(timestamp, GTID_LIST, server_id, length, next_pos, 0) + body)


def parse_rotate(ev: Event) -> tuple[int, str]:
    """(position, next file name) of a ROTATE event."""
    body = ev.body
    return struct.unpack_from("<Q", body)[0], body[8:].decode("utf-8", "replace")


def parse_query(ev: Event) -> tuple[str, str]:
    """(default database, statement text) of a QUERY event (or a compressed one, inflated)."""
    body = ev.body
    if len(body) < 13:
        raise BinlogError("QUERY event too short")
    db_len = body[8]
    status_len = struct.unpack_from("<H", body, 11)[0]
    start = 13 + status_len
    db = body[start : start + db_len].decode("utf-8", "replace")
    text = body[start + db_len + 1 :]
    if ev.type == QUERY_COMPRESSED:  # log_bin_compress: the statement is zlib behind a small header
        text = _inflate(text)
    return db, text.decode("utf-8", "replace")


def _inflate(data: bytes) -> bytes:
    """MariaDB's compressed binlog text: a byte 0x80 | algorithm << 4 | n, the original length in n
    big-endian bytes, then zlib data."""
    if not data or data[0] & 0xE0 != 0x80 or not 1 <= data[0] & 0x07 <= 4:
        raise BinlogError("compressed QUERY event: unknown compression header")
    n = data[0] & 0x07
    want = int.from_bytes(data[1 : 1 + n], "big")
    try:
        out = zlib.decompress(data[1 + n :])
    except zlib.error as exc:
        raise BinlogError(f"compressed QUERY event: {exc}") from None
    if len(out) != want:
        raise BinlogError(f"compressed QUERY event: {len(out)} bytes inflated, its header says {want}")
    return out


def parse_table_map(ev: Event) -> tuple[str, str]:
    """(database, table) of a TABLE_MAP event (post-header: table id u48 + flags u16)."""
    body = ev.body
    db_len = body[8]
    db = body[9 : 9 + db_len].decode("utf-8", "replace")
    t = 9 + db_len + 1
    tbl_len = body[t]
    return db, body[t + 1 : t + 1 + tbl_len].decode("utf-8", "replace")


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def describe(result: CheckResult) -> list[str]:
    s = result.stats
    span = f", {s['first_event_time']} .. {s['last_event_time']}" if "first_event_time" in s else ""
    return [f"binlog: {s.get('transactions', 0)} transactions, {s.get('events', 0)} events{span}",
            f"GTIDs: {s.get('gtid_start') or '(none)'} -> {s.get('gtid_end') or '(none)'}"]


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ transactions


@dataclass
class Transaction:
    """What a whole transaction (an event group) was, without holding its events."""

    gtid: Gtid
    flags2: int
    first_timestamp: int
    commit_timestamp: int = 0  # the XID/COMMIT (or standalone statement) event's time
    end_pos: int = 0  # log_pos of its last event: where the next group starts in the server's binlog
    events: int = 0
    bytes: int = 0
    databases: set[str] = field(default_factory=set)
    # (default db, sql) of the QUERY events that are not BEGIN/COMMIT: DDL, or statement-format DML
    statements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ddl(self) -> bool:
        return bool(self.flags2 & (GTID_DDL | GTID_STANDALONE))


class TransactionSplitter:
    """Fed every event in order; `feed` returns a Transaction when one just ended (else None).

    `in_transaction` is False exactly at a boundary, where a segment may be cut. Events before the first
    GTID of a stream (a mid-group start) are rejected: a group must begin with its GTID event."""

    def __init__(self) -> None:
        self.current: Transaction | None = None
        self.last_ended: Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        return self.current is not None

    def feed(self, ev: Event) -> Transaction | None:
        tx = self.current
        if ev.type in CONTROL_EVENTS:
            if tx is not None and ev.type not in (HEARTBEAT, ROTATE) and not ev.artificial:
                raise BinlogError(f"event type {ev.type} inside the transaction {tx.gtid}")
            return None
        if ev.type == GTID:
            if tx is not None:
                raise BinlogError(f"GTID event inside the unfinished transaction {tx.gtid}")
            gtid, flags2 = parse_gtid(ev)
            self.current = Transaction(gtid, flags2, ev.timestamp, events=1, bytes=ev.length, end_pos=ev.next_pos)
            return None
        if tx is None:
            raise BinlogError(f"event type {ev.type} at log position {ev.next_pos} outside any transaction")
        tx.events += 1
        tx.bytes += ev.length
        tx.end_pos = ev.next_pos
        ends = False
        if ev.type == XID or ev.type == XA_PREPARE:
            ends = True
        elif ev.type in (QUERY, QUERY_COMPRESSED):
            db, sql = parse_query(ev)
            word = sql.lstrip()[:10].upper().encode()
            if db:
                tx.databases.add(db)
            if word.startswith((b"COMMIT", b"ROLLBACK")) and not word.startswith(b"ROLLBACK TO"):
                ends = True
            elif not word.startswith(_TX_WORDS):
                tx.statements.append((db, sql))
                ends = bool(tx.flags2 & GTID_STANDALONE)
        elif ev.type == TABLE_MAP:
            tx.databases.add(parse_table_map(ev)[0])
        if not ends:
            return None
        tx.commit_timestamp = ev.timestamp
        self.current = None
        self.last_ended = tx
        return tx


# ------------------------------------------------------------------ the format check of a binlog file


class BinlogChecker(FormatChecker):
    """A segment (or any binlog file) fed in chunks: magic, a Format_description first, every event's length
    and CRC32, whole transactions only (it must end at a boundary), GTIDs increasing per domain."""

    format = "binlog"

    def __init__(self, *, require_crc: bool = True) -> None:
        self._reader = EventReader(expect_magic=True)
        self._split = TransactionSplitter()
        self._require_crc = require_crc
        self._errors: list[str] = []
        self._events = 0
        self._transactions = 0
        self._first_ts: int | None = None
        self._last_ts: int | None = None
        self._start: GtidState | None = None
        self._state = GtidState()
        self._server_version = ""
        self._databases: set[str] = set()
        self._seen_fde = False

    def feed(self, data: bytes) -> None:
        if self._errors:
            return
        try:
            for ev in self._reader.feed(data):
                self._event(ev)
        except BinlogError as exc:
            self._errors.append(str(exc))

    def _event(self, ev: Event) -> None:
        if not self._seen_fde:
            if ev.type != FORMAT_DESCRIPTION:
                raise BinlogError(f"first event is type {ev.type}, not a Format_description")
            self._seen_fde = True
            self._server_version = fde_server_version(ev)
            if self._require_crc and not self._reader.checksum:
                raise BinlogError("events carry no CRC32 (binlog_checksum = NONE): they cannot be checked")
        self._events += 1
        if ev.type == GTID_LIST and self._start is None and self._transactions == 0:
            self._start = GtidState(parse_gtid_list(ev))
            self._state = self._start.copy()
        if ev.type == GTID:
            gtid, _ = parse_gtid(ev)
            last = self._state.by_domain.get(gtid.domain)
            if last is not None and gtid.seq <= last.seq:
                raise BinlogError(f"GTID {gtid} does not follow {last} in domain {gtid.domain}")
        tx = self._split.feed(ev)
        if tx is not None:
            self._transactions += 1
            self._state.apply(tx.gtid)
            self._databases |= tx.databases
            if self._first_ts is None:
                self._first_ts = tx.first_timestamp
            self._last_ts = tx.commit_timestamp

    def finish(self) -> CheckResult:
        errors = list(self._errors)
        if not errors:
            if self._reader.pending or not self._seen_fde:
                errors.append("truncated: the file ends inside an event" if self._seen_fde else "no events")
            elif self._split.in_transaction:
                errors.append("truncated: the file ends inside a transaction")
        stats: dict[str, Any] = {
            "events": self._events,
            "transactions": self._transactions,
            "gtid_start": str(self._start) if self._start is not None else "",
            "gtid_end": str(self._state),
            "databases": sorted(self._databases),
        }
        if self._first_ts is not None and self._last_ts is not None:
            stats["first_event_time"] = iso(self._first_ts)
            stats["last_event_time"] = iso(self._last_ts)
        return CheckResult(
            self.format, not errors, errors, stats=stats, facts={"server_version": self._server_version}
        )
