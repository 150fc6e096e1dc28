"""The binlog stream of one job: replication events in, committed segments out, until `ctx.stop` is set.

Positions: a segment covers `[start, end)` of the server's binlog; `end` is where the stream continues,
so a segment closed by a file switch (a Rotate, or the server restarted into a new file) ends at
`(next file, 4)` and the next one starts there. Resume = the last committed segment's `end` and `gtid_end`.
A gap (error 1236: the binlog asked for is purged; or what the server sends does not follow on from the
committed end) is reported (`pitr_gap`, the state file's counter) and a new chain (`follows = null`)
starts at the server's oldest binlog file: the window restarts at the next base backup (docs/pitr.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql.err

from backupd.errors import StepError
from backupd.formats.binlog import (
    CONTROL_EVENTS,
    CRC_LEN,
    FORMAT_DESCRIPTION,
    GTID,
    GTID_LIST,
    GTID_STANDALONE,
    HEADER_LEN,
    HEARTBEAT,
    QUERY,
    QUERY_COMPRESSED,
    ROTATE,
    XA_PREPARE,
    XID,
    BinlogError,
    Event,
    Gtid,
    GtidState,
    parse_gtid,
    parse_gtid_list,
    parse_header,
    parse_query,
    parse_rotate,
)
from backupd.settings import SSHCfg, read_secret
from backupd.sources.base import StreamContext
from backupd.sources.mysql.config import MySQLPart
from backupd.sources.mysql.stream.checks import check_server
from backupd.sources.mysql.stream.replication import (
    BinlogUnavailable,
    LinkError,
    ReplicationConnection,
    replication_connection,
)
from backupd.sources.mysql.stream.segmenter import OpenSegment, SegmentCheckError
from backupd.store.segments import BinlogPos, Segment
from backupd.store.stream_state import read_state, write_state

BACKOFF_MAX = 30.0
STOP_GRACE = 10.0  # on stop, how long to wait for the end of a transaction already started
STATE_EVERY = 1.0


def fast_event(raw: bytes, label: str) -> Event:
    """An event from a replication packet, CRC32 not checked here: every event of a segment goes through
    the BinlogChecker on its way to disk (its CRC, length and place in a transaction), once."""
    if len(raw) < HEADER_LEN + CRC_LEN:
        raise LinkError(f"{label}: a replication event of {len(raw)} bytes")
    ts, typ, sid, length, next_pos, flags = parse_header(raw)
    if length != len(raw):
        raise LinkError(f"{label}: event type {typ} says {length} bytes but holds {len(raw)}")
    return Event(ts, typ, sid, length, next_pos, flags, raw, True)


TX_MARKERS = frozenset(CONTROL_EVENTS | {GTID, QUERY, QUERY_COMPRESSED, XID, XA_PREPARE})


class TxTracker:
    """Where transactions begin and end, as `formats/binlog.py: TransactionSplitter` decides (the segment's
    BinlogChecker holds every committed segment to that), looking only at the events that can end one."""

    def __init__(self) -> None:
        self.gtid: Gtid | None = None
        self.flags2 = 0
        self.first_ts = 0

    @property
    def open(self) -> bool:
        return self.gtid is not None

    def feed(self, ev: Event) -> Gtid | None:
        """A GTID, QUERY, XID or XA_PREPARE event: the GTID of the transaction it ends, else None."""
        if ev.type == GTID:
            if self.gtid is not None:
                raise BinlogError(f"GTID event inside the unfinished transaction {self.gtid}")
            self.gtid, self.flags2 = parse_gtid(ev)
            self.first_ts = ev.timestamp
            return None
        if self.gtid is None:
            raise BinlogError(f"event type {ev.type} at log position {ev.next_pos} outside any transaction")
        ends = ev.type in (XID, XA_PREPARE)
        if ev.type == QUERY:
            word = parse_query(ev)[1].lstrip()[:10].upper()
            if word.startswith(("COMMIT", "ROLLBACK")) and not word.startswith("ROLLBACK TO"):
                ends = True
            elif not word.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "XA ")):
                ends = bool(self.flags2 & GTID_STANDALONE)
        elif ev.type == QUERY_COMPRESSED:
            ends = bool(self.flags2 & GTID_STANDALONE)
        if not ends:
            return None
        gtid, self.gtid = self.gtid, None
        return gtid


class Gap(Exception):
    """What the server sends does not follow on from the committed end."""


def heartbeat_for(segment: float) -> float:
    """Heartbeats wake an idle stream: often enough to close segments on time and stop promptly."""
    return max(0.5, min(2.0, segment / 4))


def state_from_list(gtids: list[Any]) -> GtidState:
    """A GTID list event holds the last GTID per (domain, server): keep the highest seq per domain."""
    return GtidState(sorted(gtids, key=lambda g: g.seq))


@dataclass
class Chain:
    """Where the stream stands: the committed end and what continues it."""

    end: BinlogPos | None  # None: a new chain at the server's oldest file
    gtid: GtidState = field(default_factory=GtidState)
    last_seq: int | None = None  # the seq the next segment follows (None at a chain's start)
    new: bool = True  # no segment committed in this chain yet (its GTID state comes from the server)


class BinlogStream:
    """`stream(job, ctx)` of a MySQL/WordPress source: reconnects with backoff, resumes exactly."""

    def __init__(self, part: MySQLPart, ssh: SSHCfg | None, ctx: StreamContext) -> None:
        self.part = part
        self.ssh = ssh
        self.ctx = ctx
        self.pitr = part.pitr
        assert self.pitr.server_id is not None  # the config requires it when enabled
        self.server_id = self.pitr.server_id
        self.segment_seconds = float(self.pitr.segment)
        self.heartbeat = heartbeat_for(self.segment_seconds)
        self.read_timeout = max(10.0, self.heartbeat * 5)
        before = read_state(ctx.state_dir, ctx.job_name) or {}
        self.gaps = int(before.get("gaps", 0))  # a counter across restarts of the stream
        self.last_gap: dict[str, Any] | None = before.get("last_gap")
        self.committed_at: float | None = None
        self.server_pos: BinlogPos | None = None
        self.seen_at = 0.0
        self._state_written = 0.0
        self.open: OpenSegment | None = None
        self._fde: bytes | None = None  # the current file's Format_description, as the server sent it
        self.at: BinlogPos | None = None  # the last transaction boundary the stream reached
        self.chain = self._resume_point()
        # the GTID state as transactions arrive; `chain.gtid` is the committed one (the last `gtid_end`).
        # Anything not committed (a refused segment, a dropped link) is streamed again from `chain.end`,
        # so every session starts this over from the committed state.
        self.gtid = self.chain.gtid.copy()

    # -- where to start -----------------------------------------------------------------------------
    def _resume_point(self) -> Chain:
        self.ctx.segments.sweep()
        last = self.ctx.segments.last()
        if last is None:
            return Chain(None)
        if last.manifest.get("unreadable") or "end" not in last.manifest:
            raise StepError("stream", f"segment {last.seq:08d} in {self.ctx.segments.dir}: its manifest is"
                            " unreadable, so where to resume is unknown (move the segment aside to start a new chain)")
        self.committed_at = time.time()
        return Chain(last.end, GtidState.parse(str(last.manifest.get("gtid_end", ""))), last.seq, new=False)

    def _event(self, name: str, **fields: Any) -> None:
        self.ctx.events.event(name, job=self.ctx.job_name, **fields)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        password = read_secret(self.part.password_file)
        checked = False
        backoff = 1.0
        while not self.ctx.stop.is_set():
            try:
                with replication_connection(self.part, password, self.ssh, self.read_timeout) as conn:
                    if not checked:
                        for line in check_server(conn, conn.facts()):
                            self._event("pitr_check", detail=line)
                        checked = True
                    self._session(conn)
                    backoff = 1.0
            except LinkError as exc:
                self._commit_open()
                self._event("pitr_link_lost", error=str(exc), retry_in=backoff)
                self._write_state(force=True, connected=False)
                self.ctx.stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            except BinlogUnavailable as exc:
                self._commit_open()
                self._gap(f"the server cannot send the binlog from {self.chain.end} (error 1236: {exc}):"
                          " purged (expired) before it was streamed")
                self.ctx.stop.wait(min(backoff, 1.0))
            except Gap as exc:
                self._commit_open()
                self._gap(str(exc))
                self.ctx.stop.wait(min(backoff, 1.0))
            except SegmentCheckError as exc:  # corrupt bytes from the link: never committed, streamed again
                self._event("pitr_segment_refused", error=str(exc), retry_in=backoff)
                self.ctx.stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            except pymysql.err.MySQLError as exc:
                msg = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
                if not checked:  # a refused login or missing grant at the start: not worth retrying
                    raise StepError("stream", msg, host=f"{self.part.host}:{self.part.port}") from None
                self._commit_open()
                self._event("pitr_link_lost", error=msg, retry_in=backoff)
                self.ctx.stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            except BaseException:
                if self.open is not None:
                    self.open.abort()
                    self.open = None
                raise
        self._commit_open()
        self._write_state(force=True, connected=False)

    def _gap(self, reason: str) -> None:
        after = str(self.chain.end) if self.chain.end else None
        self.gaps += 1
        self.last_gap = {"after": after, "reason": reason, "at": time.time()}
        self._event("pitr_gap", after=after, reason=reason, chain="new chain from the server's oldest binlog")
        if self.ctx.on_gap is not None:
            try:
                self.ctx.on_gap(reason, {"after": after, "window": "restarts at the next base backup"})
            except Exception as exc:  # a notification never stops the stream
                self._event("warning", step="notify", error=f"pitr_gap: {type(exc).__name__}: {exc}")
        self.chain = Chain(None)
        self.gtid = GtidState()
        self._write_state(force=True)

    def _session(self, conn: ReplicationConnection) -> None:
        chain = self.chain
        if chain.end is None:
            logs = conn.binary_logs()
            if not logs:
                raise StepError("stream", "the server lists no binary logs", host=conn.label)
            chain.end = BinlogPos(logs[0][0], 4)
            chain.new = True
        start = chain.end
        self.gtid = chain.gtid.copy()  # what was not committed is streamed again: its GTIDs too
        conn.dump(start, self.server_id, self.heartbeat)
        self._event("pitr_streaming", start=str(start), gtid=str(chain.gtid), server=conn.label)
        tx = TxTracker()
        pending: list[bytes] = []
        file = start.file
        expect: int | None = start.pos  # where the next real event must start
        self._fde = None
        self.at = start
        grace: float | None = None
        stop = self.ctx.stop
        while True:
            if stop.is_set():
                if not tx.open:
                    return
                if grace is None:
                    grace = time.monotonic() + STOP_GRACE
                elif time.monotonic() > grace:
                    return  # the rest of the transaction never came: it is streamed again next time
            raw = conn.read_event()
            if raw is None:
                raise LinkError(f"{conn.label}: the server ended the binlog stream")
            typ = raw[4]
            if tx.open and typ not in TX_MARKERS:  # row events, table maps...: the bulk, kept cheap
                pending.append(raw)
                continue
            self.seen_at = time.time()
            ev = fast_event(raw, conn.label)
            if typ == QUERY_COMPRESSED:  # log_bin_compress switched on while streaming (checks.py refuses it)
                self._commit_open()  # the whole transactions before it are kept
                raise StepError("stream", f"{file}:{ev.next_pos}: a compressed query event: log_bin_compress is"
                                " ON; pitr must read each statement (DDL a restore cannot rewrite is refused),"
                                " so set log_bin_compress=OFF", host=conn.label)
            if typ == HEARTBEAT:
                self.server_pos = BinlogPos(ev.body.decode("utf-8", "replace"), ev.next_pos)
                self._maybe_close()
                self._write_state()
                continue
            if typ == ROTATE and ev.artificial:
                pos, name = parse_rotate(ev)
                if name != file:
                    self._switch_file(BinlogPos(name, pos), ev.timestamp)
                    file = name
                expect = pos
                continue
            if ev.next_pos and expect is not None:  # the first real event after a (re)start or a file switch
                begins = ev.next_pos - ev.length  # (later ones may skip: the server leaves out Annotate_rows)
                if begins != expect:
                    raise Gap(f"the server sent {file}:{begins}, the stream expected {file}:{expect}")
                expect = None
            if typ in CONTROL_EVENTS:
                if tx.open:
                    raise Gap(f"{file}:{ev.next_pos}: event type {typ} inside the transaction {tx.gtid}")
                if typ == FORMAT_DESCRIPTION:
                    self._fde = ev.raw
                elif typ == GTID_LIST:
                    self._gtid_list(ev, BinlogPos(file, ev.next_pos))
                elif ev.next_pos:
                    self._advance(BinlogPos(file, ev.next_pos))
                continue
            try:
                ended = tx.feed(ev)
            except BinlogError as exc:
                raise Gap(f"{file}:{ev.next_pos}: {exc}") from None
            pending.append(raw)
            if ended is None:
                continue
            if self._fde is None:
                raise LinkError(f"{conn.label}: events before any Format_description")
            if self.open is None:
                self.open = self._new_segment(self._fde)
            self.open.add(pending, tx.first_ts)
            pending = []
            self.gtid.apply(ended)
            self._advance(BinlogPos(file, ev.next_pos))
            self._maybe_close()
            self._write_state()

    # -- positions and segments -----------------------------------------------------------------------
    def _advance(self, pos: BinlogPos) -> None:
        """The stream stands at a transaction boundary at `pos`."""
        self.at = pos

    def _gtid_list(self, ev: Event, pos: BinlogPos) -> None:
        server_state = state_from_list(parse_gtid_list(ev))
        chain = self.chain
        if chain.new and self.open is None:
            chain.gtid = server_state
            self.gtid = server_state.copy()
        elif server_state != self.gtid:
            raise Gap(f"the server's GTID state at {pos.file} is {server_state or 'empty'}, the stream's {self.gtid}")
        self._advance(pos)

    def _new_segment(self, fde: bytes) -> OpenSegment:
        chain = self.chain
        assert chain.end is not None
        return OpenSegment(
            self.ctx.segments, self.ctx.segments.next_seq(), job=self.ctx.job_name, start=chain.end,
            gtid_start=chain.gtid, fde=fde, follows=chain.last_seq,
            compression=self.ctx.compression, recipients=self.ctx.recipients,
        )

    def _switch_file(self, to: BinlogPos, ts: int) -> None:
        """The server moved on to the next binlog file: close the open segment there (segments never span
        a rotation); with nothing open but a committed end in the old file, a bridge segment (no
        transactions) keeps the chain exact."""
        chain = self.chain
        self.at = to
        if self.open is not None:
            self._commit(to, ts)
        elif chain.end is not None and chain.end != to and not chain.new and self._fde is not None:
            self.open = self._new_segment(self._fde)
            self._commit(to, ts)
        elif chain.new:
            chain.end = to

    def _maybe_close(self) -> None:
        seg = self.open
        if seg is not None and seg.transactions and seg.age >= self.segment_seconds and self.at is not None:
            self._commit(self.at)

    def _commit_open(self) -> None:
        """Commit what is open (the link dropped, or a stop); a segment failing its check is dropped here:
        the chain's end did not move, so the next session streams those transactions again."""
        try:
            if self.open is not None and self.open.transactions and self.at is not None:
                self._commit(self.at)
        except SegmentCheckError as exc:
            self._event("pitr_segment_refused", error=str(exc))
        if self.open is not None:
            self.open.abort()
            self.open = None
        self.gtid = self.chain.gtid.copy()

    def _commit(self, end: BinlogPos, ts: int | None = None) -> Segment:
        seg = self.open
        assert seg is not None
        self.open = None
        try:
            committed = seg.commit(end, self.gtid, ts)
        except SegmentCheckError:  # its transactions are streamed again from the committed end
            self.gtid = self.chain.gtid.copy()
            raise
        self.chain = Chain(end, self.gtid.copy(), committed.seq, new=False)
        self.committed_at = time.time()
        self._event(
            "pitr_segment", seq=committed.seq, start=str(committed.start), end=str(end),
            transactions=committed.manifest["transactions"], bytes=committed.manifest["bytes"],
        )
        self._write_state(force=True)
        if self.ctx.on_commit is not None:
            self.ctx.on_commit(committed)
        return committed

    def _write_state(self, force: bool = False, connected: bool = True) -> None:
        now = time.time()
        if not force and now - self._state_written < STATE_EVERY:
            return
        self._state_written = now
        seg = self.open
        oldest = seg.oldest_event_ts if seg is not None else None
        write_state(self.ctx.state_dir, self.ctx.job_name, {
            "committed": self.chain.end.to_json() if self.chain.end else None,
            "committed_gtid": str(self.chain.gtid),
            "committed_at": self.committed_at,
            "server": self.server_pos.to_json() if self.server_pos else None,
            "seen_at": self.seen_at,
            "stale_after": self.read_timeout,
            "oldest_uncommitted": oldest,
            "open_transactions": seg.transactions if seg is not None else 0,
            "connected": connected,
            "pid": os.getpid(),
            "gaps": self.gaps,
            "last_gap": self.last_gap,
            "segment_seconds": self.segment_seconds,
        })
