"""Committed segments made from a real server's own closed binlog files, until the stream is on this branch.

`commit_closed_binlogs` reads each binlog file the server has closed (after `FLUSH BINARY LOGS`) that is not
committed yet, cuts it at transaction boundaries every `per_segment` transactions and commits each piece
through `SegmentStore.commit` the way the stream does: one valid binlog file on its own (magic, the file's
Format_description, a GTID list of the state before it, whole transactions), zstd-compressed, with the
manifest keys of the `Segment` docstring. A piece starts where the previous one ended (mid-file); the last
piece of a file ends at the next file's position 4 (the ROTATE's target), where the next piece starts, so
the pieces of consecutive files form one chain.

The session world (tests/pitr/conftest.py, `Segments`) uses the real stream instead as soon as the tree has
it (`backupd stream JOB`, running through the workload, waited on until it has committed the server's last
GTID); BACKUPD_TEST_SERVER_SEGMENTS=1 forces this helper. test_wordpress_until.py and the bench use it always.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from backupd.formats.binlog import (
    FORMAT_DESCRIPTION,
    GTID,
    GTID_LIST,
    MAGIC,
    ROTATE,
    BinlogChecker,
    Event,
    EventReader,
    GtidState,
    TransactionSplitter,
    make_gtid_list_event,
    parse_gtid_list,
    parse_rotate,
)
from backupd.scratch.mariadb import MariaDB
from backupd.store.segments import BinlogPos, Segment, SegmentStore


def closed_binlogs(server: MariaDB) -> list[Path]:
    """The server's binlog files but the current one, oldest first (from its index file)."""
    index = next(server.datadir.glob("*.index"))
    names = [line.strip() for line in index.read_text().splitlines() if line.strip()]
    return [server.datadir / Path(n).name for n in names[:-1]]


def _commit(store: SegmentStore, job: str, data: bytes, start: BinlogPos, end: BinlogPos,
            prev: Segment | None, server_id: int) -> Segment:  # fmt: skip
    """An empty piece (no transaction) keeps the previous piece's times, so the window never shrinks."""
    check = BinlogChecker()
    check.feed(data)
    result = check.finish()
    assert result.ok, result.errors
    seq = store.next_seq()
    tmp = store.tmp_path(seq)
    stored = zstandard.ZstdCompressor(level=3).compress(data)
    tmp.write_bytes(stored)
    stats = result.stats
    quiet = prev.manifest["last_event_time"] if prev else _iso_now()
    manifest = {
        "version": 1, "job": job, "bytes": len(stored), "sha256": hashlib.sha256(stored).hexdigest(),
        "raw_bytes": len(data), "compression": "zstd", "encrypted": False, "recipients": [],
        "server_id": server_id, "start": start.to_json(), "end": end.to_json(),
        "gtid_start": stats["gtid_start"], "gtid_end": stats["gtid_end"],
        "first_event_time": stats.get("first_event_time") or quiet,
        "last_event_time": stats.get("last_event_time") or quiet,
        "events": stats["events"], "transactions": stats["transactions"], "follows": prev.seq if prev else None,
        "committed_at": _iso_now(),
    }
    return store.commit(tmp, seq, ".zst", manifest)


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def commit_closed_binlogs(server: MariaDB, store: SegmentStore, job: str, per_segment: int = 5) -> list[Segment]:
    """FLUSH BINARY LOGS, then commit every closed file not committed yet; returns the new segments."""
    server.execute("FLUSH BINARY LOGS")
    last = store.last()
    done: list[Segment] = []
    for path in closed_binlogs(server):
        if last is not None and BinlogPos(path.name, 1 << 62) <= last.end:
            continue  # committed already
        events: list[Event] = EventReader().feed(path.read_bytes())
        fde = next(e for e in events if e.type == FORMAT_DESCRIPTION)
        state = head_state = GtidState()
        split = TransactionSplitter()
        rotate = next((e for e in events if e.type == ROTATE and not e.artificial), None)
        file_end = BinlogPos(parse_rotate(rotate)[1], parse_rotate(rotate)[0]) if rotate else None
        start = BinlogPos(path.name, 4)
        body = bytearray()
        count = 0
        tx_end = 4
        for ev in events:
            if ev.type == GTID_LIST:
                state = GtidState(parse_gtid_list(ev))
            if ev.type in (FORMAT_DESCRIPTION, GTID_LIST) or ev.type in (ROTATE,) or ev.artificial:
                continue
            if not split.in_transaction and ev.type != GTID:
                continue  # binlog checkpoints and other control events between transactions
            if not body:
                head_state = state.copy()
            body += ev.raw
            tx = split.feed(ev)
            if tx is None:
                continue
            count += 1
            tx_end = tx.end_pos
            state.apply(tx.gtid)
            if count == per_segment:
                head = MAGIC + fde.raw + make_gtid_list_event(head_state.gtids(), server_id=1,
                                                             timestamp=fde.timestamp, next_pos=0)
                end = BinlogPos(path.name, tx_end)
                seg = _commit(store, job, head + bytes(body), start, end, last, 1)
                done.append(seg)
                last, start = seg, end
                body.clear()
                count = 0
        if not body:
            head_state = state.copy()
        head = MAGIC + fde.raw + make_gtid_list_event(head_state.gtids(), server_id=1, timestamp=fde.timestamp,
                                                     next_pos=0)
        end = file_end or BinlogPos(path.name, tx_end)
        seg = _commit(store, job, head + bytes(body), start, end, last, 1)
        done.append(seg)
        last = seg
    return done


def segment_files(store: SegmentStore) -> dict[int, Path]:
    return {s.seq: s.path for s in store.segments()}


def manifest_of(seg: Segment) -> dict[str, object]:
    return json.loads(seg.manifest_path.read_text())  # type: ignore[no-any-return]
