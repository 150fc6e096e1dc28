"""`backupd restore JOB --until ...` against a real MariaDB's binlog: exact rows at chosen seconds, renamed
restores, and every refusal (outside the window, a hole, an altered segment, DDL it cannot rewrite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.pitr.conftest import JOB, World, rows, second


def restore(capsys: pytest.CaptureFixture[str], cfg: Path, world: World, until: str, to: str,
            *extra: str) -> tuple[int, str, str]:  # fmt: skip
    return run_cli(capsys, "--config", str(cfg), "restore", JOB, "--until", until, "--to", to,
                   "--password-file", str(world.password_file), "--yes", *extra)


def drop(world: World, *names: str) -> None:
    world.target.execute("".join(f"DROP DATABASE IF EXISTS `{n}`;" for n in names))


def test_restore_until_lands_on_the_rows_of_that_second(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    seconds = sorted(w.snapshots)
    after_first = [s for s in seconds if w.base_seconds[0] <= s < w.base_seconds[1]]
    after_second = [s for s in seconds if s >= w.base_seconds[1]]
    assert len(after_first) >= 2 and len(after_second) >= 2, "the workload lost too many seconds"
    for s, base in ((after_first[-1], w.bases[0]), (after_second[1], w.bases[1]), (after_second[-1], w.bases[1])):
        drop(w, "shop")
        rc, out, err = restore(capsys, w.config, w, second(s), w.to("shop"), "--database", "shop")
        assert rc == 0, err
        assert f"restored {JOB}/{base}" in out
        assert rows(w.target, "shop") == w.snapshots[s], f"--until {second(s)}"
        assert "last event" in out and "transactions" in out


def test_position_and_gtid_targets(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    # the newest base's own position: nothing replayed, exactly the base
    pos = json.loads((w.store / JOB / w.bases[1] / "manifest.json").read_text())["artifacts"][0]["binlog_position"]
    drop(w, "shop")
    rc, out, err = restore(capsys, w.config, w, f"{pos['file']}:{pos['pos']}", w.to("shop"), "--database", "shop")
    assert rc == 0, err
    assert "0 transactions" in out
    # one GTID past the base's: exactly one more transaction than the base holds
    domain, server, seq = (int(x) for x in pos["gtid"].split("-"))
    drop(w, "shop")
    base_rows = rows_after(w, f"{pos['file']}:{pos['pos']}", capsys)
    rc, out, err = restore(capsys, w.config, w, f"{domain}-{server}-{seq + 1}", w.to("shop"), "--database", "shop")
    assert rc == 0, err
    assert "1 transactions" in out
    assert rows(w.target, "shop") != base_rows


def rows_after(w: World, until: str, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, ...]]:
    rc, _, err = restore(capsys, w.config, w, until, w.to("shop"), "--database", "shop")
    assert rc == 0, err
    return rows(w.target, "shop")


def test_restore_under_another_name(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    s = sorted(w.snapshots)[-1]
    drop(w, "shop_copy")
    rc, _, err = restore(capsys, w.config, w, second(s), w.to("shop_copy"), "--database", "shop")
    assert rc == 0, err
    assert rows(w.target, "shop_copy") == w.snapshots[s]


def test_several_databases_need_database(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    rc, _, err = restore(capsys, w.config, w, second(sorted(w.snapshots)[-1]), w.to("shop"))
    assert rc != 0 and "pick one with --database" in err and "Traceback" not in err


def test_ddl_with_a_qualified_name_is_refused(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    rc, _, err = restore(capsys, w.config, w, second(sorted(w.snapshots)[-1]), w.to("blog_copy"), "--database", "blog")
    assert rc != 0
    assert "CREATE TABLE blog.extra" in err and "restore under the original name blog on another server" in err
    assert len(err.strip().splitlines()) == 1


def test_until_outside_the_window(pitr_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = pitr_world
    rc, _, err = restore(capsys, w.config, w, second(w.base_seconds[0] - 60), w.to("shop"), "--database", "shop")
    assert rc != 0 and "before the restorable window" in err
    newest = w.segments()[-1].last_time.timestamp()
    rc, _, err = restore(capsys, w.config, w, second(int(newest) + 120), w.to("shop"), "--database", "shop")
    assert rc != 0 and "after the newest committed segment" in err
    rc, _, err = restore(capsys, w.config, w, "yesterday", w.to("shop"), "--database", "shop")
    assert rc != 0 and "expected an ISO 8601 time" in err


def test_an_altered_segment_is_refused(pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    seg = w.segments()[-2]
    path = tmp_path / "w" / "store" / JOB / "binlog" / seg.path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    drop(w, "shop")
    rc, _, err = restore(capsys, cfg, w, second(sorted(w.snapshots)[-1]), w.to("shop"), "--database", "shop")
    assert rc != 0 and f"segment {seg.seq:08d}: sha256 does not match" in err
    assert w.target.execute("SHOW DATABASES LIKE 'shop'") == [], "refused before anything was written"


def test_an_altered_base_is_refused(pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    bdir = tmp_path / "w" / "store" / JOB / w.bases[-1]
    art = json.loads((bdir / "manifest.json").read_text())["artifacts"][0]
    path = bdir / art["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    drop(w, "shop")
    rc, _, err = restore(capsys, cfg, w, second(sorted(w.snapshots)[-1]), w.to("shop"), "--database", "shop")
    assert rc != 0 and f"backup {w.bases[-1]}: {art['file']}:" in err and "refusing to restore" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert w.target.execute("SHOW DATABASES LIKE 'shop'") == [], "refused before anything was written"


def test_a_hole_in_the_chain_is_refused(pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    # a segment between the first base and the second: the second base still restores, the first cannot
    gone = w.between_bases()[0]
    (tmp_path / "w" / "store" / JOB / "binlog" / gone).unlink()
    (tmp_path / "w" / "store" / JOB / "binlog" / (gone.split(".")[0] + ".json")).unlink()
    before_second = [s for s in sorted(w.snapshots) if w.base_seconds[0] <= s < w.base_seconds[1]][-1]
    rc, _, err = restore(capsys, cfg, w, second(before_second), w.to("shop"), "--database", "shop")
    assert rc != 0 and "is broken after segment" in err and "a segment is missing" in err


def test_the_target_needs_binlog_replay(pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from backupd.lab.content import write_secret

    w = pitr_world
    w.target.create_user("limited", "limited-pw", "ALL", "`shop_lim`.*")
    pw = write_secret(tmp_path / "limited.pw", "limited-pw")
    to = f"mysql://limited@{w.target.host}:{w.target.port}/shop_lim"
    rc, _, err = run_cli(capsys, "--config", str(w.config), "restore", JOB, "--until", second(sorted(w.snapshots)[-1]),
                         "--to", to, "--password-file", str(pw), "--database", "shop")
    assert rc != 0 and "lacks the BINLOG REPLAY privilege" in err
    assert w.target.execute("SHOW DATABASES LIKE 'shop_lim'") == [], "refused before anything was written"


def test_a_segment_whose_events_fail_their_crc_is_refused(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """The hash matches (a stream that committed bad bytes): the CRC32 of every event still refuses it."""
    import hashlib

    import zstandard

    from backupd.store.segments import open_segment

    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    seg = w.segments()[-2]
    path = tmp_path / "w" / "store" / JOB / "binlog" / seg.path.name
    with open_segment(seg) as fh:  # a streamed zstd frame: its size is not in the header
        raw = bytearray(fh.read())
    raw[-10] ^= 0x01  # inside the last event, before its CRC
    stored = zstandard.ZstdCompressor().compress(bytes(raw))
    path.write_bytes(stored)
    man_path = path.parent / seg.manifest_path.name
    man = json.loads(man_path.read_text())
    man.update(bytes=len(stored), sha256=hashlib.sha256(stored).hexdigest())
    man_path.write_text(json.dumps(man))
    rc, _, err = restore(capsys, cfg, w, second(sorted(w.snapshots)[-1]), w.to("shop"), "--database", "shop")
    assert rc != 0 and f"segment {seg.seq:08d}" in err and "CRC32 mismatch" in err


def test_beside_the_live_database_on_its_own_server(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:  # fmt: skip
    """The job's own server writes a binlog: a user without BINLOG ADMIN is refused; root replays with
    sql_log_bin=0, so the old transactions' GTIDs never enter the live binlog again."""
    from backupd.formats.binlog import BinlogChecker
    from backupd.lab.content import write_secret
    from tests.pitr.server_segments import closed_binlogs

    w = pitr_world
    src = w.source
    src.create_user("replayer", "replayer-pw", "BINLOG REPLAY")
    src.execute("GRANT ALL ON `shop_beside`.* TO 'replayer'@'%'")
    s = sorted(w.snapshots)[-1]
    pw = write_secret(tmp_path / "replayer.pw", "replayer-pw")
    rc, _, err = run_cli(capsys, "--config", str(w.config), "restore", JOB, "--until", second(s), "--to",
                         f"mysql://replayer@{src.host}:{src.port}/shop_beside", "--password-file", str(pw),
                         "--database", "shop")
    assert rc != 0 and "writes a binlog" in err and "BINLOG ADMIN" in err
    src.execute("FLUSH BINARY LOGS")
    before = len(closed_binlogs(src))
    root_pw = write_secret(tmp_path / "root.pw", src.root_password)
    rc, _, err = run_cli(capsys, "--config", str(w.config), "restore", JOB, "--until", second(s), "--to",
                         f"mysql://root@{src.host}:{src.port}/shop_beside", "--password-file", str(root_pw),
                         "--database", "shop")
    assert rc == 0, err
    assert rows(src, "shop_beside") == w.snapshots[s]
    assert rows(src, "shop") != w.snapshots[s], "the live database is untouched"
    src.execute("FLUSH BINARY LOGS")
    for path in closed_binlogs(src)[before - 1:]:
        check = BinlogChecker()
        check.feed(path.read_bytes())
        result = check.finish()
        assert result.ok, result.errors  # GTIDs still increase: nothing old was logged again


def test_a_segment_that_does_not_decompress_is_named(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:  # fmt: skip
    """The hash matches but the bytes are no zstd frame: the reader thread's error names the segment."""
    import hashlib

    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    seg = w.segments()[-2]
    path = tmp_path / "w" / "store" / JOB / "binlog" / seg.path.name
    stored = b"\x28\xb5\x2f\xfd" + b"\xff" * 64  # zstd's magic, then no valid frame
    path.write_bytes(stored)
    man_path = path.parent / seg.manifest_path.name
    man = json.loads(man_path.read_text())
    man.update(bytes=len(stored), sha256=hashlib.sha256(stored).hexdigest())
    man_path.write_text(json.dumps(man))
    drop(w, "shop")
    rc, _, err = restore(capsys, cfg, w, second(sorted(w.snapshots)[-1]), w.to("shop"), "--database", "shop")
    assert rc != 0 and f"restore: segment {seg.seq:08d}: " in err and "unexpected" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert w.target.execute("SHOW DATABASES LIKE 'shop'") == [], "refused before anything was written"
