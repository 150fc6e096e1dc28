"""Committed binlog segments of a point-in-time job: `{root}/{job}/binlog/`, beside (not in) its backups.

A segment is one valid binlog file on its own (magic, format description, GTID list, whole transactions),
compressed (and encrypted when the job's backups are) like an artifact, with a small JSON manifest. The
data file is written under a temp name, fsynced and renamed first; the manifest is written last, so a segment
exists exactly when its manifest does (a crash leaves at most a stray `.tmp-*` or a data file without a
manifest, both swept and never listed). Layout and manifest keys: docs/pitr.md.

Positions are the server's: `BinlogPos(file, pos)` orders by the file's numeric suffix, then offset. A
segment covers `[start, end)` of one server binlog file (segments never span a rotation); `follows` is
the seq of the segment it continues exactly, None where a chain starts (the first, or after a gap).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from backupd.engine.compression import iter_chunks, open_decompressed
from backupd.fsutil import ensure_private_dir, fsync_dir, replace_private_file

SEGMENTS_DIR = "binlog"
TMP_PREFIX = ".tmp-"
MANIFEST_SUFFIX = ".json"
S3_RECORD_SUFFIX = ".s3.json"  # `{seq:08d}.s3.json`: the segment's copy in S3 (versions, lock), once checked
SEGMENT_KIND = "binlog-segment"
_SEQ_RE = re.compile(r"^(\d{8})\.binlog(\..+)?$")
_SUFFIX_RE = re.compile(r"(\d+)$")


@dataclass(frozen=True, order=False)
class BinlogPos:
    """A position in the server's binlog: file name (e.g. `mariadb-bin.000003`) and byte offset."""

    file: str
    pos: int

    @property
    def key(self) -> tuple[str, int, int]:
        m = _SUFFIX_RE.search(self.file)
        base = self.file[: m.start()] if m else self.file
        return (base, int(m.group(1)) if m else -1, self.pos)

    def __lt__(self, other: BinlogPos) -> bool:
        return self.key < other.key

    def __le__(self, other: BinlogPos) -> bool:
        return self.key <= other.key

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BinlogPos:
        return cls(str(data["file"]), int(data["pos"]))


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Segment:
    """One committed segment: its data file and manifest.

    Manifest keys (all written by the stream): kind, version, job, seq, file, bytes, sha256, raw_bytes,
    compression, encrypted, recipients, server_id, start, end ({file, pos}), gtid_start, gtid_end (the GTID
    state before the first and after the last transaction), first_event_time, last_event_time (ISO UTC),
    events, transactions, follows (seq or null), committed_at.
    """

    seq: int
    path: Path  # the data file
    manifest: dict[str, Any]

    @property
    def start(self) -> BinlogPos:
        return BinlogPos.from_json(self.manifest["start"])

    @property
    def end(self) -> BinlogPos:
        return BinlogPos.from_json(self.manifest["end"])

    @property
    def first_time(self) -> datetime:
        return parse_time(self.manifest["first_event_time"])

    @property
    def last_time(self) -> datetime:
        return parse_time(self.manifest["last_event_time"])

    @property
    def follows(self) -> int | None:
        value = self.manifest.get("follows")
        return None if value is None else int(value)

    @property
    def manifest_path(self) -> Path:
        return self.path.parent / f"{self.seq:08d}{MANIFEST_SUFFIX}"

    @property
    def s3_record_path(self) -> Path:
        return self.path.parent / f"{self.seq:08d}{S3_RECORD_SUFFIX}"

    def s3_record(self) -> dict[str, Any] | None:
        """The record of its checked copy in S3 (store/s3_segments.py), None while it is not copied."""
        try:
            data = json.loads(self.s3_record_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def segment_file_name(seq: int, ext: str) -> str:
    """`00000012.binlog.zst` (ext is the compression/encryption suffix, e.g. ".zst" or ".zst.age")."""
    return f"{seq:08d}.binlog{ext}"


class SegmentStore:
    """The committed segments of one job; the stream commits, restore/drill/prune read and delete."""

    def __init__(self, root: Path, job: str) -> None:
        self.dir = root / job / SEGMENTS_DIR

    def ensure(self) -> Path:
        return ensure_private_dir(self.dir)

    def tmp_path(self, seq: int) -> Path:
        """Where the stream writes segment `seq` before it is committed."""
        return self.ensure() / f"{TMP_PREFIX}{seq:08d}"

    def segments(self) -> list[Segment]:
        """Committed segments in seq order (a data file without its manifest is not committed)."""
        if not self.dir.is_dir():
            return []
        found: list[Segment] = []
        for entry in self.dir.iterdir():
            m = _SEQ_RE.match(entry.name)
            if not m or entry.name.startswith(TMP_PREFIX):
                continue
            seq = int(m.group(1))
            man = self.dir / f"{seq:08d}{MANIFEST_SUFFIX}"
            try:
                manifest = json.loads(man.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                manifest = {"seq": seq, "unreadable": True}
            found.append(Segment(seq, entry, manifest))
        return sorted(found, key=lambda s: s.seq)

    def last(self) -> Segment | None:
        segs = self.segments()
        return segs[-1] if segs else None

    def next_seq(self) -> int:
        last = self.last()
        return 1 if last is None else last.seq + 1

    def commit(self, tmp: Path, seq: int, ext: str, manifest: dict[str, Any]) -> Segment:
        """fsync + rename the data file, then the manifest (0600, temp name, fsync, rename), then fsync the
        directory: the manifest appears whole or not at all."""
        final = self.dir / segment_file_name(seq, ext)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        manifest = {**manifest, "kind": SEGMENT_KIND, "seq": seq, "file": final.name}
        replace_private_file(self.dir / f"{seq:08d}{MANIFEST_SUFFIX}", json.dumps(manifest, indent=2).encode())
        fsync_dir(self.dir)
        return Segment(seq, final, manifest)

    def sweep(self) -> int:
        """Remove temp files and data files whose manifest never got written (a killed stream's leftovers)."""
        if not self.dir.is_dir():
            return 0
        removed = 0
        for entry in self.dir.iterdir():
            m = _SEQ_RE.match(entry.name)
            orphan = m is not None and not (self.dir / f"{m.group(1)}{MANIFEST_SUFFIX}").exists()
            if entry.name.endswith(S3_RECORD_SUFFIX):  # the copy record of a segment deleted mid-way
                orphan = not (self.dir / (entry.name.removesuffix(S3_RECORD_SUFFIX) + MANIFEST_SUFFIX)).exists()
            if entry.name.startswith(TMP_PREFIX) or orphan:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def delete(self, seg: Segment) -> None:
        """Manifest first, so a crash mid-delete leaves an orphan data file (swept), never a listed hole."""
        seg.manifest_path.unlink(missing_ok=True)
        seg.path.unlink(missing_ok=True)
        seg.s3_record_path.unlink(missing_ok=True)
        fsync_dir(self.dir)


def check_segment(seg: Segment) -> list[str]:
    """Problems with a committed segment's stored bytes: size and sha256 against its manifest."""
    if seg.manifest.get("unreadable"):
        return [f"segment {seg.seq:08d}: manifest is unreadable"]
    try:
        size = seg.path.stat().st_size
    except OSError as exc:
        return [f"segment {seg.seq:08d}: {exc.strerror or exc}"]
    if size != int(seg.manifest.get("bytes", -1)):
        return [f"segment {seg.seq:08d}: {size} bytes, the manifest says {seg.manifest.get('bytes')}"]
    digest = hashlib.sha256()
    with seg.path.open("rb") as fh:
        for chunk in iter_chunks(fh):
            digest.update(chunk)
    if digest.hexdigest() != seg.manifest.get("sha256"):
        return [f"segment {seg.seq:08d}: sha256 does not match its manifest (altered or corrupt)"]
    return []


def open_segment(seg: Segment) -> BinaryIO:
    """The segment's binlog bytes: decrypted (with the keyring's identities) and decompressed on the fly."""
    return open_decompressed(seg.path)[1]


def chains(segs: list[Segment]) -> Iterator[list[Segment]]:
    """Runs of segments each continuing the previous exactly (a new run at every `follows` break)."""
    run: list[Segment] = []
    for seg in segs:
        if run and (seg.follows != run[-1].seq or seg.start != run[-1].end):
            yield run
            run = []
        run.append(seg)
    if run:
        yield run
