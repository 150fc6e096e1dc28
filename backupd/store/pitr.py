"""Point-in-time planning over the store: which base backup and which segments restore to an instant, the
restorable window, and what retention by window must keep. Pure (no server, no job type): restore, drills,
prune, status and metrics share it, so they can never disagree about the window (docs/pitr.md).

A base is a verified backup whose artifacts record `binlog_position = {file, pos, gtid}` (the consistent
snapshot of each database's dump). It can be rolled forward with a chain of segments (`segments.chains`)
that covers its position, `chain[0].start <= pos <= chain[-1].end`, and agrees with its GTID state (per
domain the base records, the chain's `gtid_start` <= the base's seq_no <= its `gtid_end`: after a RESET
MASTER or a failover an old base's file:pos can fall inside a new chain's range). Its snapshot is older than the
backup's `finished_at`, which is the instant the base counts from: conservative, never a second too early.

Targets (`--until`): a time (ISO 8601; one-second resolution, like the event timestamps: transactions
committed in seconds before TIME's are replayed, the first one at or after it ends the replay), a binlog
position `file:pos` (transactions ending at or before it), or a GTID `domain-server-seq` (up to and
including it). A bare date (`2026-12-01`) is refused: it would read as a GTID, and midnight is a guess.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from backupd.errors import BackupdError, UsageError
from backupd.formats.binlog import GtidState
from backupd.store.backups import StoredBackup
from backupd.store.segments import BinlogPos, Segment, SegmentStore, chains, parse_time

_GTID_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_POS_RE = re.compile(r"^(?P<file>[^:\s]+\.\d+):(?P<pos>\d+)$")
# a bare date (would otherwise read as the GTID 2026-12-1): refused rather than guessed as midnight
_DATE_RE = re.compile(r"^(19[7-9]\d|2\d{3})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


def parse_gtid_state(text: str) -> dict[int, int]:
    """`0-1-8,1-2-3` -> {domain: seq_no}."""
    out: dict[int, int] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        m = _GTID_RE.match(part)
        if m:
            out[int(m.group(1))] = int(m.group(3))
    return out


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Until:
    """Where a restore stops: exactly one of `time`, `pos`, `gtid` (domain, server_id, seq_no)."""

    text: str
    time: datetime | None = None
    pos: BinlogPos | None = None
    gtid: tuple[int, int, int] | None = None

    def __str__(self) -> str:
        return iso(self.time) if self.time else self.text


def parse_until(text: str) -> Until:
    """A time (converted to UTC; one without a zone is the local zone's), `file:pos` or a GTID."""
    value = text.strip()
    if _DATE_RE.match(value):
        raise UsageError(
            f"restore: --until {text!r} is a date without a time: give the instant, e.g. {value}T00:00:00Z"
            " (a GTID is domain-server-seq without zero padding)"
        )
    if m := _GTID_RE.match(value):
        return Until(value, gtid=(int(m.group(1)), int(m.group(2)), int(m.group(3))))
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is not None:
        when = (when if when.tzinfo else when.astimezone()).astimezone(UTC).replace(microsecond=0)
        return Until(value, time=when)
    if m := _POS_RE.match(value):
        return Until(value, pos=BinlogPos(m.group("file"), int(m.group("pos"))))
    raise UsageError(
        f"restore: --until {text!r}: expected an ISO 8601 time (2026-12-01T12:34:56Z), a binlog position"
        " (mariadb-bin.000003:1234) or a GTID (0-1-42)"
    )


# ------------------------------------------------------------------ bases and the window


def databases_of(backups: list[StoredBackup]) -> list[str]:
    """The databases the job's bases record a binlog position for."""
    names: set[str] = set()
    for b in backups:
        arts = b.manifest.get("artifacts", [])
        names |= {str(a.get("database", a["name"])) for a in arts if "binlog_position" in a}
    return sorted(names)


def pick_database(backups: list[StoredBackup], only: str | None) -> str:
    """`--database`, or the one database of the job (a restore to a point replays one database)."""
    have = databases_of(backups)
    if only is not None:
        return only
    if len(have) > 1:
        raise UsageError(
            f"restore: --until: the job has several databases ({', '.join(have)}): pick one with --database"
        )
    if not have:
        raise BackupdError("restore: --until: no base backup of this job records a binlog position")
    return have[0]


@dataclass(frozen=True)
class Base:
    """A verified backup as the start of a roll-forward, for one database or (None) all of its databases."""

    backup: StoredBackup
    pos: BinlogPos  # the oldest of the considered artifacts' positions: replay starts here
    gtid: dict[int, int]
    taken: datetime  # a second after the backup's finished_at: every snapshot in it is older
    positions: dict[str, BinlogPos]  # database -> its own snapshot position


def base_of(backup: StoredBackup, database: str | None = None) -> Base | None:
    """The backup as a base, or None (unverified, not a PITR dump, or without that database)."""
    if not backup.verified:
        return None
    positions: dict[str, BinlogPos] = {}
    gtids: dict[str, dict[int, int]] = {}
    for art in backup.manifest.get("artifacts", []):
        where: dict[str, Any] | None = art.get("binlog_position")
        name = str(art.get("database", art.get("name")))
        if where is None or (database is not None and name != database):
            continue
        positions[name] = BinlogPos(str(where["file"]), int(where["pos"]))
        gtids[name] = parse_gtid_state(str(where.get("gtid", "")))
    if not positions:
        return None
    first = min(positions, key=lambda n: positions[n].key)
    finished = backup.manifest.get("finished_at")
    # finished_at is written to the second, rounded down: the next second is the first one surely after it
    taken = (parse_time(finished) if finished else datetime.fromtimestamp(backup.path.stat().st_mtime, UTC)).replace(
        microsecond=0
    ) + timedelta(seconds=1)
    return Base(backup, positions[first], gtids[first], taken, positions)


def bases(backups: list[StoredBackup], database: str | None = None) -> list[Base]:
    """Usable bases, oldest first."""
    found = [b for b in (base_of(x, database) for x in backups) if b is not None]
    return sorted(found, key=lambda b: (b.taken, b.backup.backup_id))


def covers(chain: list[Segment], pos: BinlogPos) -> bool:
    return chain[0].start <= pos <= chain[-1].end


def _gtid_state(text: object) -> GtidState | None:
    try:
        return GtidState.parse(str(text or ""))
    except ValueError:
        return None


def gtid_agrees(chain: list[Segment], gtid: dict[int, int]) -> bool:
    """Per domain of the base's GTID state: `chain[0].gtid_start` <= its seq_no <= `chain[-1].gtid_end`.

    A domain the chain starts without counts from 0; one the chain never reaches disagrees. Segments
    without GTID fields (or a base without a GTID state) are judged by position alone."""
    if "gtid_end" not in chain[-1].manifest or not gtid:
        return True
    start, end = _gtid_state(chain[0].manifest.get("gtid_start")), _gtid_state(chain[-1].manifest["gtid_end"])
    if start is None or end is None:
        return False
    for domain, seq in gtid.items():
        first, last = start.by_domain.get(domain), end.by_domain.get(domain)
        if (first is not None and seq < first.seq) or last is None or seq > last.seq:
            return False
    return True


def pairs(chain: list[Segment], base: Base) -> bool:
    """This chain rolls this base forward: it covers the base's position and agrees with its GTID state."""
    return covers(chain, base.pos) and gtid_agrees(chain, base.gtid)


@dataclass
class Window:
    """The instants a restore can reach: from `start` (the oldest base the newest chain covers) to `end`
    (the newest committed segment's last event). `start` is None when no base is covered yet."""

    start: datetime | None
    end: datetime | None
    base: Base | None  # the base `start` comes from
    chain: list[Segment]


def window(backups: list[StoredBackup], segs: list[Segment], database: str | None = None) -> Window:
    runs = list(chains([s for s in segs if not s.manifest.get("unreadable")]))
    if not runs:
        return Window(None, None, None, [])
    newest = runs[-1]
    end = newest[-1].last_time
    usable = [b for b in bases(backups, database) if pairs(newest, b) and b.taken <= end]
    if not usable:
        return Window(None, end, None, newest)
    return Window(usable[0].taken, end, usable[0], newest)


# ------------------------------------------------------------------ a restore's plan


@dataclass
class Plan:
    base: Base
    segments: list[Segment]  # from the one holding the base's position to the one the target falls in
    until: Until


def _gtid_reached(seg: Segment, gtid: tuple[int, int, int]) -> bool:
    return parse_gtid_state(str(seg.manifest.get("gtid_end", ""))).get(gtid[0], -1) >= gtid[2]


def _before_target(base: Base, until: Until) -> bool:
    if until.time is not None:
        return base.taken <= until.time
    if until.pos is not None:
        return base.pos <= until.pos
    assert until.gtid is not None
    return base.gtid.get(until.gtid[0], -1) < until.gtid[2]


def _in_chain(chain: list[Segment], until: Until) -> bool:
    if until.time is not None:
        return until.time <= chain[-1].last_time
    if until.pos is not None:
        return covers(chain, until.pos)
    assert until.gtid is not None
    return _gtid_reached(chain[-1], until.gtid)


def _segments_for(chain: list[Segment], base: Base, until: Until) -> list[Segment]:
    out: list[Segment] = []
    for seg in chain:
        if seg.end <= base.pos:
            continue  # wholly before the base
        if until.time is not None and out and seg.first_time > until.time:
            break  # every transaction in it committed after the target
        out.append(seg)
        if until.pos is not None and until.pos <= seg.end:
            break
        if until.gtid is not None and _gtid_reached(seg, until.gtid):
            break
    return out


def plan_from(base: Base, segs: list[Segment], until: Until) -> Plan:
    """Roll this base forward to `until` (a drill's pair of bases): its chain must reach the target."""
    for chain in chains(segs):
        if not pairs(chain, base):
            continue
        if not _in_chain(chain, until):
            last = chain[-1]
            raise BackupdError(
                f"the binlog chain from base {base.backup.backup_id} ends at segment {last.seq:08d} ({last.end}),"
                f" before {until}: a segment is missing or not committed yet"
            )
        return Plan(base, _segments_for(chain, base, until), until)
    raise BackupdError(
        f"no committed segment covers base {base.backup.backup_id}'s position {base.pos}: a segment is missing"
    )


def plan_restore(backups: list[StoredBackup], segs: list[Segment], until: Until, database: str | None) -> Plan:
    """The newest base before the target with an unbroken chain of segments to it; else one clear refusal."""
    job = backups[0].job if backups else "?"
    unreadable = [s for s in segs if s.manifest.get("unreadable")]
    if unreadable:
        raise BackupdError(f"restore: segment {unreadable[0].seq:08d} of job {job}: its manifest is unreadable")
    runs = list(chains(segs))
    if not runs:
        raise BackupdError(f"restore: job {job} has no committed binlog segments (is `backupd stream {job}` running?)")
    if until.pos is not None:  # positions compare by file name: one of another server's binlogs is no target
        names = {s.start.key[0] for s in segs} | {s.end.key[0] for s in segs}
        if until.pos.key[0] not in names:
            raise BackupdError(
                f"restore: --until {until.pos} names a binlog this job's segments do not come from"
                f" ({', '.join(sorted(n + '*' for n in names))})"
            )
    all_bases = bases(backups, database)
    if not all_bases:
        what = f"database {database}" if database else "its databases"
        raise BackupdError(f"restore: job {job} has no verified base backup with a binlog position for {what}")
    for chain in reversed(runs):
        if not _in_chain(chain, until):
            continue
        usable = [b for b in all_bases if pairs(chain, b) and _before_target(b, until)]
        if usable:
            base = usable[-1]
            return Plan(base, _segments_for(chain, base, until), until)
        # no base rolls this chain forward to the target: an older chain (before a gap) may still hold it
    _refuse(job, runs, all_bases, until, backups, segs, database)
    raise AssertionError("unreachable")  # pragma: no cover


def _refuse(
    job: str, runs: list[list[Segment]], all_bases: list[Base], until: Until,
    backups: list[StoredBackup], segs: list[Segment], database: str | None,
) -> None:  # fmt: skip
    w = window(backups, segs, database)
    span = f"{iso(w.start)} .. {iso(w.end)}" if w.start and w.end else "empty"
    newest = runs[-1][-1]
    if until.time is not None and until.time > newest.last_time:
        raise BackupdError(
            f"restore: --until {until} is after the newest committed segment ({newest.seq:08d}, last event"
            f" {iso(newest.last_time)}); the restorable window is {span}"
        )
    if not _in_chain(runs[-1], until) and not any(_in_chain(c, until) for c in runs):
        raise BackupdError(f"restore: --until {until} is not in any committed segment; the restorable window is {span}")
    if len(runs) > 1 and any(_before_target(b, until) for b in all_bases):
        # the target is reachable only across a break: name the first break after the newest base before it
        for prev, nxt in itertools.pairwise(runs):
            if any(pairs(prev, b) or b.pos < prev[0].start for b in all_bases if _before_target(b, until)):
                a, b2 = prev[-1], nxt[0]
                raise BackupdError(
                    f"restore: the binlog chain of job {job} is broken after segment {a.seq:08d} (ends at {a.end},"
                    f" the next committed segment {b2.seq:08d} starts at {b2.start}): a segment is missing;"
                    f" the restorable window is {span}"
                )
    raise BackupdError(f"restore: --until {until} is before the restorable window ({span})")


def window_keep(
    backups: list[StoredBackup], segs: list[Segment], window_seconds: float, now: datetime
) -> tuple[set[str], list[Segment], Base | None]:
    """Retention by window: (backup ids to keep, segments to prune, the base the window's start needs).

    To restore to any instant since `now - window`, keep the newest base taken at or before that instant
    (else the oldest base there is), every newer base, and every segment from that base's position on.
    Segments of its chain that end before it are pruned; so are the whole chains before that one (a gap:
    they can no longer be rolled forward from any kept base). Later chains are never pruned here. Without
    a covered base nothing is pruned."""
    edge = now - timedelta(seconds=window_seconds)
    runs = list(chains([s for s in segs if not s.manifest.get("unreadable")]))
    all_bases = bases(backups)
    covered = [b for b in all_bases if any(pairs(c, b) for c in runs)]
    if not covered:
        return set(), [], None
    older = [b for b in covered if b.taken <= edge]
    anchor = older[-1] if older else covered[0]
    keep = {b.backup.backup_id for b in all_bases if b.taken >= anchor.taken}
    # by seq, not position alone: a later chain (after RESET MASTER, say) can reuse positions below the anchor's
    own = next(c for c in runs if pairs(c, anchor))
    first, last = own[0].seq, own[-1].seq
    prune = [s for s in segs if not s.manifest.get("unreadable")
             and (s.seq < first or (s.seq <= last and s.end <= anchor.pos))]  # fmt: skip
    return keep, prune, anchor


# ------------------------------------------------------------------ restores and prune, side by side

_NO_LOCKS = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # filesystems without flock


@contextmanager
def reading_segments(segments: SegmentStore) -> Iterator[None]:
    """A shared lock on the segment directory while a restore or drill reads segments: a prune meanwhile
    leaves them for next time (`pruning_segments`) instead of deleting one mid-replay."""
    try:
        fd = os.open(segments.dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield
    finally:
        os.close(fd)


@contextmanager
def pruning_segments(segments: SegmentStore) -> Iterator[bool]:
    """The exclusive side: yields False (prune nothing now) while a restore or drill holds the directory."""
    try:
        fd = os.open(segments.dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield True
    finally:
        os.close(fd)
