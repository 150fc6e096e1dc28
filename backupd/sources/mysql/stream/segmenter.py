"""One open segment: a binlog file of its own (magic, the server's Format_description, a GTID list stating
the GTID state at its start, then whole transactions), written through the artifact pipeline.

Every byte goes through `ArtifactWriter`: the `BinlogChecker` reads the plaintext (every event's length and
CRC32, whole transactions, GTIDs increasing), the worker compresses (and age-encrypts), hashes and writes
`.tmp-SEQ...` in the job's binlog directory. `commit` closes it (fsync), refuses it unless the check passed,
and hands it to `SegmentStore.commit` (rename, then the manifest).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from backupd.engine.pipeline import ArtifactWriter
from backupd.formats.binlog import MAGIC, BinlogChecker, GtidState, iso, make_gtid_list_event, parse_header
from backupd.settings import CompressionCfg
from backupd.store.segments import TMP_PREFIX, BinlogPos, Segment, SegmentStore

MANIFEST_VERSION = 1
BATCH = 256 << 10  # transactions are handed to the pipeline in batches: one thread hand-off per batch


class SegmentCheckError(Exception):
    """The segment's own bytes failed the binlog check: never committed."""


class OpenSegment:
    """Segment `seq` being written; `start` and `gtid_start` are where it takes over from the previous one."""

    def __init__(
        self,
        store: SegmentStore,
        seq: int,
        *,
        job: str,
        start: BinlogPos,
        gtid_start: GtidState,
        fde: bytes,
        follows: int | None,
        compression: CompressionCfg,
        recipients: list[str],
    ) -> None:
        self.store = store
        self.seq = seq
        self.job = job
        self.start = start
        self.gtid_start = gtid_start.copy()
        self.follows = follows
        self.opened = time.monotonic()
        self.transactions = 0
        self.events = 0
        self.oldest_event_ts: int | None = None  # the first transaction's time: how old the uncommitted data is
        self.server_id = parse_header(fde)[2]
        self._name = f"{TMP_PREFIX}{seq:08d}"
        self.writer = ArtifactWriter(
            store.ensure(), self._name, "binlog", "", compression.algorithm, compression.level,
            checker=BinlogChecker(), recipients=recipients,
        )
        gtid_list = make_gtid_list_event(
            gtid_start.gtids(), server_id=self.server_id, timestamp=parse_header(fde)[0], next_pos=0
        )
        self._batch = bytearray(MAGIC + fde + gtid_list)

    def add(self, events: list[bytes], first_ts: int) -> None:
        """One whole transaction's events, as the server sent them (CRCs intact)."""
        if self.oldest_event_ts is None:
            self.oldest_event_ts = first_ts
        for raw in events:
            self._batch += raw
        self.transactions += 1
        self.events += len(events)
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self.writer.write(bytes(self._batch))
            self._batch.clear()

    @property
    def age(self) -> float:
        return time.monotonic() - self.opened

    def commit(self, end: BinlogPos, gtid_end: GtidState, fallback_ts: int | None = None) -> Segment:
        """Close, check, then commit with its manifest; raises SegmentCheckError (file removed) on a bad check."""
        try:
            self._flush()
            result = self.writer.close()
        except BaseException:
            self.abort()
            raise
        if not result.ok:
            self.abort()
            errors = result.check.errors if result.check else []
            raise SegmentCheckError(f"segment {self.seq:08d}: {'; '.join(errors) or 'check failed'}")
        stats = result.check.stats if result.check else {}
        now_iso = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fallback = iso(fallback_ts) if fallback_ts else now_iso
        if str(stats.get("gtid_end", "")) != str(gtid_end):
            self.abort()
            raise SegmentCheckError(
                f"segment {self.seq:08d}: its events end at GTID {stats.get('gtid_end')}, the stream at {gtid_end}"
            )
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "job": self.job,
            "bytes": result.bytes,
            "sha256": result.sha256,
            "raw_bytes": result.raw_bytes,
            "compression": result.compression,
            "encrypted": bool(result.recipients),
            "recipients": result.recipients,
            "server_id": self.server_id,
            "start": self.start.to_json(),
            "end": end.to_json(),
            "gtid_start": str(self.gtid_start),
            "gtid_end": str(gtid_end),
            "first_event_time": stats.get("first_event_time", fallback),
            "last_event_time": stats.get("last_event_time", fallback),
            "events": int(stats.get("events", 0)),
            "transactions": int(stats.get("transactions", 0)),
            "databases": list(stats.get("databases", [])),  # added key: which databases it touches
            "follows": self.follows,
            "committed_at": now_iso,
        }
        ext = result.file[len(self._name):]
        return self.store.commit(self.writer.path, self.seq, ext, manifest)

    def abort(self) -> None:
        self.writer.abort()
