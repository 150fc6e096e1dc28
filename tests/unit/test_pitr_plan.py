"""The pure parts of restore to a point: `--until` parsing, the binlog comments of a PITR dump, the DDL a
renamed restore refuses, and the plan/window over hand-made manifests (no server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.errors import BackupdError, UsageError
from backupd.formats.sqldump import SqlDumpChecker
from backupd.sources.mysql.dump import dump_argv
from backupd.sources.mysql.pitr import qualified_ref
from backupd.store.backups import StoredBackup
from backupd.store.pitr import gtid_agrees, parse_until, plan_restore, window, window_keep
from backupd.store.segments import BinlogPos, Segment

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_until_forms() -> None:
    assert parse_until("2026-12-01T12:34:56Z").time == datetime(2026, 12, 1, 12, 34, 56, tzinfo=UTC)
    assert parse_until("2026-12-01T14:34:56.7+02:00").time == datetime(2026, 12, 1, 12, 34, 56, tzinfo=UTC)
    assert parse_until("mariadb-bin.000003:1234").pos == BinlogPos("mariadb-bin.000003", 1234)
    assert parse_until("0-1-42").gtid == (0, 1, 42)
    naive = parse_until("2026-12-01 12:34:56").time
    assert naive is not None and naive.tzinfo is UTC  # the local zone's, converted
    with pytest.raises(UsageError, match="expected an ISO 8601 time"):
        parse_until("last tuesday")
    with pytest.raises(UsageError, match="a date without a time: give the instant"):
        parse_until("2026-12-01")  # not the GTID 2026-12-1
    assert parse_until("2026-12-01T00:00:00Z").time == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_until("0-1-01").gtid == (0, 1, 1) and parse_until("1-2-2026").gtid == (1, 2, 2026)


def test_the_dump_records_the_snapshot_position() -> None:
    text = (
        b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n"
        b"/*!40101 SET NAMES utf8mb4 */;\n"
        b"-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n"
        b"-- CHANGE MASTER TO MASTER_LOG_FILE='mariadb-bin.000007', MASTER_LOG_POS=1819;\n"
        b"-- SET GLOBAL gtid_slave_pos='0-1-8,1-2-3';\n"
        b"-- Dump completed on 2026-12-01 12:00:00\n"
    )
    checker = SqlDumpChecker()
    checker.feed(text)
    facts = checker.finish().facts
    assert (facts["binlog_file"], facts["binlog_pos"], facts["gtid"]) == ("mariadb-bin.000007", 1819, "0-1-8,1-2-3")
    assert "--master-data=2" in dump_argv("mariadb-dump", "f", "db", pitr=True)
    assert not any(a.startswith("--master-data") for a in dump_argv("mariadb-dump", "f", "db"))


@pytest.mark.parametrize(("sql", "hit"), [
    ("CREATE TABLE shop.t2 (id INT)", True),
    ("ALTER TABLE `shop`.`items` ADD c INT", True),
    ("CREATE TABLE t2 (id INT)", False),
    ("CREATE TABLE shopping.t (id INT)", False),
    ("INSERT INTO t VALUES ('shop.x')", True),  # only DDL is judged: the caller filters on the verb
])
def test_qualified_names(sql: str, hit: bool) -> None:
    assert qualified_ref(sql, "shop") is hit


def _backup(tmp: Path, bid: str, pos: int, taken: datetime) -> StoredBackup:
    man = {"verified": True, "finished_at": taken.strftime("%Y-%m-%dT%H:%M:%SZ"), "artifacts": [
        {"name": "shop", "database": "shop", "format": "sql-dump", "file": "shop.sql.zst",
         "binlog_position": {"file": "bin.000001", "pos": pos, "gtid": f"0-1-{pos}"}}]}
    return StoredBackup("j", bid, tmp / bid, man)


def _seg(seq: int, start: int, end: int, t0: datetime, t1: datetime, follows: int | None) -> Segment:
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return Segment(seq, Path(f"/nonexistent/{seq:08d}.binlog.zst"), {
        "seq": seq, "start": {"file": "bin.000001", "pos": start}, "end": {"file": "bin.000001", "pos": end},
        "first_event_time": t0.strftime(iso), "last_event_time": t1.strftime(iso), "follows": follows,
        "gtid_end": f"0-1-{end}",
    })


def _world(tmp: Path) -> tuple[list[StoredBackup], list[Segment]]:
    m = timedelta(minutes=1)
    backups = [_backup(tmp, "B1", 150, T0 + 1 * m), _backup(tmp, "B2", 450, T0 + 5 * m)]
    segs = [_seg(1, 4, 100, T0, T0 + m / 2, None), _seg(2, 100, 300, T0 + m / 2, T0 + 3 * m, 1),
            _seg(3, 300, 500, T0 + 3 * m, T0 + 6 * m, 2), _seg(4, 500, 700, T0 + 6 * m, T0 + 9 * m, 3)]
    return backups, segs


def test_plan_picks_the_newest_base_and_the_segments_from_its_position(tmp_path: Path) -> None:
    backups, segs = _world(tmp_path)
    plan = plan_restore(backups, segs, parse_until("2026-12-01T12:04:00Z"), "shop")
    assert plan.base.backup.backup_id == "B1" and [s.seq for s in plan.segments] == [2, 3]
    plan = plan_restore(backups, segs, parse_until("2026-12-01T12:08:00Z"), "shop")
    assert plan.base.backup.backup_id == "B2" and [s.seq for s in plan.segments] == [3, 4]
    plan = plan_restore(backups, segs, parse_until("bin.000001:350"), "shop")
    assert plan.base.backup.backup_id == "B1" and [s.seq for s in plan.segments] == [2, 3]
    w = window(backups, segs)
    assert (w.start, w.end) == (T0 + timedelta(minutes=1, seconds=1), T0 + timedelta(minutes=9))


def test_plan_refusals(tmp_path: Path) -> None:
    backups, segs = _world(tmp_path)
    with pytest.raises(BackupdError, match="after the newest committed segment"):
        plan_restore(backups, segs, parse_until("2026-12-01T12:10:00Z"), "shop")
    with pytest.raises(BackupdError, match="before the restorable window"):
        plan_restore(backups, segs, parse_until("2026-12-01T12:00:30Z"), "shop")
    with pytest.raises(BackupdError, match="names a binlog this job's segments do not come from"):
        plan_restore(backups, segs, parse_until("mysql-bin.000001:350"), "shop")
    holed = [s for s in segs if s.seq != 3]
    with pytest.raises(BackupdError, match="broken after segment 00000002"):
        plan_restore(backups, holed, parse_until("2026-12-01T12:08:00Z"), "shop")


def test_a_time_before_a_gap_restores_from_the_older_chain(tmp_path: Path) -> None:
    """A gap started a new chain; an instant inside the older one is still reached from the base before it."""
    m = timedelta(minutes=1)
    backups = [_backup(tmp_path, "B1", 150, T0 + m), _backup(tmp_path, "B2", 650, T0 + 7 * m)]
    segs = [_seg(1, 4, 100, T0, T0 + m / 2, None), _seg(2, 100, 300, T0 + m / 2, T0 + 3 * m, 1),
            _seg(3, 600, 700, T0 + 6 * m, T0 + 8 * m, None), _seg(4, 700, 800, T0 + 8 * m, T0 + 9 * m, 3)]
    plan = plan_restore(backups, segs, parse_until("2026-12-01T12:02:00Z"), "shop")
    assert plan.base.backup.backup_id == "B1" and [s.seq for s in plan.segments] == [2]
    plan = plan_restore(backups, segs, parse_until("2026-12-01T12:08:30Z"), "shop")
    assert plan.base.backup.backup_id == "B2" and [s.seq for s in plan.segments] == [3, 4]
    with pytest.raises(BackupdError, match="restore: "):  # inside the gap: no chain holds it
        plan_restore(backups, segs, parse_until("2026-12-01T12:04:00Z"), "shop")


def test_a_base_pairs_only_with_a_chain_its_gtids_agree_with(tmp_path: Path) -> None:
    """After RESET MASTER the new chain reuses bin.000001's positions: B1's 150 falls in it, its GTID does not."""
    m = timedelta(minutes=1)
    b1 = _backup(tmp_path, "B1", 150, T0 + m)  # gtid 0-1-150, from the old numbering
    segs = [_seg(1, 4, 100, T0, T0 + m / 2, None), _seg(2, 100, 300, T0 + m / 2, T0 + 3 * m, 1),
            _seg(3, 4, 400, T0 + 4 * m, T0 + 6 * m, None), _seg(4, 400, 700, T0 + 6 * m, T0 + 9 * m, 3)]
    segs[2].manifest.update(gtid_start="", gtid_end="0-1-40")
    segs[3].manifest.update(gtid_start="0-1-40", gtid_end="0-1-70")
    target = parse_until("2026-12-01T12:08:00Z")
    with pytest.raises(BackupdError, match="restore: "):
        plan_restore([b1], segs, target, "shop")  # by position alone it would replay the new chain onto B1
    assert window([b1], segs).start is None
    b3 = _backup(tmp_path, "B3", 500, T0 + 7 * m)
    b3.manifest["artifacts"][0]["binlog_position"]["gtid"] = "0-1-50"
    plan = plan_restore([b1, b3], segs, target, "shop")
    assert plan.base.backup.backup_id == "B3" and [s.seq for s in plan.segments] == [4]
    # a domain the chain never reaches, or a seq_no before the chain's start, disagrees too
    assert not gtid_agrees(segs[2:], {0: 50, 1: 3}) and not gtid_agrees(segs[3:], {0: 30})
    assert gtid_agrees(segs[3:], {0: 50})


def test_window_keep(tmp_path: Path) -> None:
    backups, segs = _world(tmp_path)
    keep, prune, anchor = window_keep(backups, segs, 3600, T0 + timedelta(minutes=30))
    assert anchor is not None and anchor.backup.backup_id == "B1" and keep == {"B1", "B2"}
    assert [s.seq for s in prune] == [1]
    keep, prune, anchor = window_keep(backups, segs, 3600, T0 + timedelta(hours=1, minutes=6))
    assert anchor is not None and anchor.backup.backup_id == "B2" and keep == {"B2"}
    assert [s.seq for s in prune] == [1, 2]  # segment 3 holds B2's position: kept
    assert json.dumps(sorted(keep))


def test_window_keep_never_prunes_a_later_chain_by_position(tmp_path: Path) -> None:
    """After RESET MASTER, segment 3 of the new chain ends at 120, below B1's 150: it is not B1's to prune."""
    m = timedelta(minutes=1)
    b1 = _backup(tmp_path, "B1", 150, T0 + m)
    segs = [_seg(1, 4, 100, T0, T0 + m / 2, None), _seg(2, 100, 300, T0 + m / 2, T0 + 3 * m, 1),
            _seg(3, 4, 120, T0 + 4 * m, T0 + 6 * m, None), _seg(4, 120, 700, T0 + 6 * m, T0 + 9 * m, 3)]
    segs[2].manifest.update(gtid_start="", gtid_end="0-1-12")
    segs[3].manifest.update(gtid_start="0-1-12", gtid_end="0-1-70")
    keep, prune, anchor = window_keep([b1], segs, 3600, T0 + timedelta(minutes=30))
    assert anchor is not None and anchor.backup.backup_id == "B1" and keep == {"B1"}
    assert [s.seq for s in prune] == [1]


def test_a_restore_holding_the_segments_defers_their_prune(tmp_path: Path) -> None:
    from backupd.store.pitr import pruning_segments, reading_segments
    from backupd.store.segments import SegmentStore

    store = SegmentStore(tmp_path, "j")
    store.ensure()
    with reading_segments(store), pruning_segments(store) as free:
        assert free is False
    with pruning_segments(store) as free:
        assert free is True
