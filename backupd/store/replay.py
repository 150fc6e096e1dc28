"""The binlog bytes a restore to a point replays: whole transactions from a base's position to the target.

Two passes over the plan's segments. `scan` proves every segment first (size and sha256 against its
manifest, then every event's CRC32 and whole transactions while decompressing) and selects transactions:
those ending after the base's position, up to the first one past the target (the replay is always a
prefix of the log, as the server committed it). It notes, per segment, the byte range of the selected
events, and what a caller must judge before writing anything (statements, databases). Only then does
`replay_bytes` stream exactly those bytes, as one binlog (magic, a Format_description, the transactions),
to `mariadb-binlog -`: nothing is applied from a segment that was found bad, and nothing is held whole.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from backupd.engine.compression import iter_chunks
from backupd.errors import BackupdError
from backupd.formats.binlog import (
    CONTROL_EVENTS,
    MAGIC,
    BinlogError,
    EventReader,
    Gtid,
    Transaction,
    TransactionSplitter,
)
from backupd.store.pitr import Plan
from backupd.store.segments import BinlogPos, Segment, check_segment, open_segment


@dataclass
class Piece:
    """The selected part of one segment: the byte range [begin, end) of its decompressed binlog."""

    seg: Segment
    fde: bytes
    begin: int
    end: int


@dataclass
class Scan:
    pieces: list[Piece] = field(default_factory=list)
    transactions: int = 0  # selected transactions (all databases; the replay filters by database)
    for_database: int = 0  # of which touch the restored database
    events: int = 0
    last_time: datetime | None = None  # commit time of the last selected transaction
    last_gtid: Gtid | None = None
    end: BinlogPos | None = None  # where the replay ends in the server's binlog
    statements: list[tuple[str, str, Gtid]] = field(default_factory=list)  # (default db, sql, gtid): not DML
    reached: bool = False  # a transaction past the target was seen (a time/position/GTID inside the log)


def _past(tx: Transaction, pos: BinlogPos, plan: Plan) -> bool:
    """The transaction lies after the target, so the replay ends before it."""
    until = plan.until
    if until.time is not None:
        return tx.commit_timestamp >= until.time.timestamp()
    if until.pos is not None:
        return until.pos < pos
    return False


def scan(plan: Plan, database: str | None) -> Scan:
    """Check every segment of the plan and select the transactions to replay (see the module doc).

    A reader thread hashes and decompresses ahead (both release the GIL, so they run on the other core)
    while this thread splits and CRC-checks the events: a fixed cost of every restore --until, halved."""
    out = Scan()
    start = plan.base.positions.get(database, plan.base.pos) if database else plan.base.pos
    ahead = _ReadAhead(plan.segments)
    try:
        for seg in plan.segments:
            problems = ahead.problems()
            if problems:
                raise BackupdError(f"restore: {problems[0]}; refusing to replay")
            if _scan_segment(seg, ahead.chunks(), start, plan, database, out):
                break
    finally:
        ahead.close()
    return out


_END = object()  # the end of one segment's chunks


class _ReadAhead:
    """Per segment, in order: its check (size, sha256), then its decompressed chunks, at most AHEAD queued."""

    AHEAD = 8  # chunks of 1 MiB

    def __init__(self, segs: list[Segment]) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(segs,), name="scan-read", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, segs: list[Segment]) -> None:
        seg: Segment | None = None
        try:
            for seg in segs:
                problems = check_segment(seg)
                if not self._put(problems) or problems:
                    return
                with open_segment(seg) as fh:
                    for chunk in iter_chunks(fh):
                        if not self._put(chunk):
                            return
                if not self._put(_END):
                    return
        except BackupdError as exc:  # raised again by the scanning thread
            self._put(exc)
        except Exception as exc:  # OSError while hashing, zstd's errors while decompressing: name the segment
            self._put(segment_error(seg, exc) if seg is not None else exc)
        except BaseException as exc:
            self._put(exc)

    def _get(self) -> object:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def problems(self) -> list[str]:
        return cast(list[str], self._get())

    def chunks(self) -> Iterator[bytes]:
        while (item := self._get()) is not _END:
            yield cast(bytes, item)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def segment_error(seg: Segment, exc: BaseException) -> BackupdError:
    """An error reading a segment's bytes (not a check's verdict) as one line naming the segment."""
    why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    return BackupdError(f"restore: segment {seg.seq:08d}: {why}; refusing to replay")


def _scan_segment(seg: Segment, chunks: Iterator[bytes], start: BinlogPos, plan: Plan, database: str | None,
                  out: Scan) -> bool:  # fmt: skip
    """Select from one segment; True once the target is reached (no later segment is needed)."""
    reader = EventReader()
    split = TransactionSplitter()
    offset = 4
    fde = b""
    tx_begin = 0
    begin = end = -1
    done = False
    file = seg.start.file
    try:
        for chunk in chunks:
            for ev in reader.feed(chunk):
                here = offset
                offset += ev.length
                if done:
                    continue  # the rest is still CRC-checked: a bad segment is refused whatever the target
                if not fde and ev.type == 15:
                    fde = ev.raw
                if not split.in_transaction and ev.type in CONTROL_EVENTS:
                    split.feed(ev)
                    continue
                if not split.in_transaction:
                    tx_begin = here
                tx = split.feed(ev)
                if tx is None:
                    continue
                pos = BinlogPos(file, tx.end_pos)
                if pos <= start:
                    continue  # in the base already
                if _past(tx, pos, plan):
                    out.reached = done = True
                    continue
                if begin < 0:
                    begin = tx_begin
                end = offset
                _take(out, tx, pos, database)
                if plan.until.gtid is not None and (tx.gtid.domain, tx.gtid.seq) == (
                    plan.until.gtid[0], plan.until.gtid[2]
                ):
                    out.reached = done = True
    except BinlogError as exc:
        raise BackupdError(f"restore: segment {seg.seq:08d}: {exc}; refusing to replay") from None
    except OSError as exc:
        raise segment_error(seg, exc) from None
    if reader.pending or split.in_transaction:
        raise BackupdError(f"restore: segment {seg.seq:08d}: truncated (ends inside an event or a transaction)")
    if begin >= 0:
        out.pieces.append(Piece(seg, fde, begin, end))
    if plan.until.pos is not None and seg.end >= plan.until.pos:
        out.reached = True
    return out.reached


def _take(out: Scan, tx: Transaction, pos: BinlogPos, database: str | None) -> None:
    out.transactions += 1
    out.events += tx.events
    out.end = pos
    out.last_gtid = tx.gtid
    out.last_time = datetime.fromtimestamp(tx.commit_timestamp, UTC)
    if database is None or database in tx.databases or not tx.databases:
        out.for_database += 1
    for db, sql in tx.statements:
        out.statements.append((db, sql, tx.gtid))


def replay_bytes(result: Scan) -> Iterator[bytes]:
    """One binlog holding exactly the selected transactions (a Format_description again where it changes)."""
    if not result.pieces:
        return
    yield MAGIC
    current = b""
    for piece in result.pieces:
        if piece.fde != current:
            yield piece.fde
            current = piece.fde
        yield from _piece_bytes(piece)


def _piece_bytes(piece: Piece) -> Iterator[bytes]:
    offset = 0
    try:
        with open_segment(piece.seg) as fh:
            for chunk in iter_chunks(fh):
                lo, hi = offset, offset + len(chunk)
                offset = hi
                if hi <= piece.begin:
                    continue
                yield chunk[max(0, piece.begin - lo) : max(0, min(len(chunk), piece.end - lo))]
                if hi >= piece.end:
                    break
    except BackupdError:
        raise
    except Exception as exc:  # the bytes changed since the scan proved them, or the disk failed
        raise segment_error(piece.seg, exc) from exc
