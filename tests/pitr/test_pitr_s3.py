"""PITR segments in S3 against moto's real server: shipped by `run` and by the stream's shipper, checked by
HEAD, pending through an outage while the stream keeps reading, locked under Object Lock (an early prune
plans), pruned there only when no base left in S3 needs them, and fetched back for a restore on a new
machine that lands on the exact rows of the chosen second."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from backupd.config import load_config
from backupd.daemon.metrics import make_registry
from backupd.lab.s3 import MotoS3
from backupd.logs import EventLog
from backupd.store.backups import Store
from backupd.store.catalog import Catalog
from backupd.store.prune import prune_jobs
from backupd.store.s3 import Bucket
from backupd.store.s3_segments import check_segment_copy, list_segments, pending
from backupd.store.s3_sync import ship
from backupd.store.segment_ship import ship_pending
from backupd.store.segments import BinlogPos, SegmentStore
from tests.conftest import run_cli, wait_for
from tests.pitr.conftest import JOB, World, rows, second

PREFIX = "pitr/"


def clone(w: World, tmp_path: Path, server: MotoS3, *, object_lock: bool = False, **s3: Any) -> tuple[Path, str]:
    """The session's PITR world copied, with S3 on (a new bucket on `server`)."""
    bucket = f"pitr-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket, object_lock=object_lock)
    cfg = w.clone(tmp_path / "w")
    lines = ["", "[s3]", "enabled = true", f'bucket = "{bucket}"', f'prefix = "{PREFIX}"',
             f'endpoint_url = "{server.endpoint_url}"', 'region = "us-east-1"', "max_attempts = 1",
             "connect_timeout = 2", "read_timeout = 10"]  # fmt: skip
    if object_lock:
        lines += ['object_lock = "compliance"', "object_lock_days = 1"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in s3.items()]
    cfg.write_text(cfg.read_text() + "\n".join(lines) + "\n")
    return cfg, bucket


def segs(cfg: Path) -> SegmentStore:
    return SegmentStore(cfg.parent / "store", JOB)


def bucket_of(cfg: Path) -> Bucket:
    return Bucket(load_config(cfg).settings.s3)


def assert_shipped(cfg: Path) -> None:
    store, bucket = segs(cfg), bucket_of(cfg)
    assert store.segments() and not pending(store)
    remote = list_segments(bucket, JOB)
    for seg in store.segments():
        assert stat.S_IMODE(seg.s3_record_path.stat().st_mode) == 0o600
        assert remote[seg.seq].complete
        assert check_segment_copy(bucket, JOB, seg) == [], seg.seq


def test_run_ships_segments_and_a_new_machine_restores_from_the_bucket(
    pitr_world: World, s3_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = pitr_world
    cfg, bucket = clone(w, tmp_path, s3_env)
    root = cfg.parent
    assert len(pending(segs(cfg))) == len(w.segments())  # made while S3 was off: all owed
    catalog = Catalog(root / "state")
    try:
        for bid in w.bases:  # the bases were made with S3 off: queue them like any pending copy
            catalog.set_s3_state(JOB, bid, "pending")
    finally:
        catalog.close()
    rc, _, err = run_cli(capsys, "--config", str(cfg), "run", JOB)  # a run catches up on segments too
    assert rc == 0, err
    assert_shipped(cfg)
    seg = segs(cfg).segments()[0]
    head = s3_env.client().head_object(Bucket=bucket, Key=f"{PREFIX}{JOB}/binlog/{seg.path.name}",
                                       ChecksumMode="ENABLED")  # fmt: skip
    assert head["Metadata"]["sha256"] == seg.manifest["sha256"] and head["ContentLength"] == seg.manifest["bytes"]
    rc, out, err = run_cli(capsys, "--config", str(cfg), "status")
    assert f"{JOB}: stream STOPPED" in out and "segments in s3" in out, out
    text = generate_latest(make_registry(lambda: load_config(cfg))).decode()
    assert f'backupd_pitr_s3_pending{{backup_job="{JOB}"}} 0.0' in text
    if shutil.which("promtool") is not None:
        done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr

    # the machine is lost: no store, no catalog; the bucket is all there is
    shutil.rmtree(root / "store")
    shutil.rmtree(root / "state")
    rc, out, err = run_cli(capsys, "--config", str(cfg), "catalog", "rebuild", "--from-s3")
    assert rc == 0, err
    n = len(w.segments())
    assert f"{JOB}: {n} binlog segments fetched from s3" in out, out
    assert [s.manifest for s in segs(cfg).segments()] == [s.manifest for s in w.segments()]
    assert not pending(segs(cfg))  # fetched from the bucket: not copied back up
    s = [x for x in sorted(w.snapshots) if x >= w.base_seconds[1]][-1]
    client = s3_env.client()  # the documented step: fetch the base the restore needs (aws s3 cp)
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}{JOB}/{w.bases[1]}/")["Contents"]:
        dest = root / "store" / JOB / w.bases[1] / obj["Key"].rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    w.target.execute("DROP DATABASE IF EXISTS shop_dr;")
    rc, out, err = run_cli(capsys, "--config", str(cfg), "restore", JOB, "--until", second(s), "--to",
                           w.to("shop_dr"), "--database", "shop", "--password-file", str(w.password_file), "--yes")
    assert rc == 0, err
    assert f"restored {JOB}/{w.bases[1]}" in out
    assert rows(w.target, "shop_dr") == w.snapshots[s]


def test_a_segment_altered_in_the_bucket_is_found_reshipped_and_never_fetched(
    pitr_world: World, s3_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, bucket = clone(pitr_world, tmp_path, s3_env)
    assert ship_pending(load_config(cfg), JOB, EventLog(None))[1] == []
    victim = segs(cfg).segments()[1]
    key = f"{PREFIX}{JOB}/binlog/{victim.path.name}"
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=b"not a binlog")
    rc, out, err = run_cli(capsys, "--config", str(cfg), "verify", "--s3")
    assert rc == 1 and f"s3 {JOB}/binlog:" in out and f"s3://{bucket}/{key}" in err, out + err
    assert [s.seq for s in pending(segs(cfg))] == [victim.seq]  # shipped again by the next shipper
    rc, out, err = run_cli(capsys, "--config", str(cfg), "verify", "--s3")
    assert rc == 0 and f"s3 {JOB}/binlog: {len(pitr_world.segments())} segment(s) checked, 1 copied, ok" in out, out
    for seg in segs(cfg).segments():  # the copy records lost: the bucket gives them back
        seg.s3_record_path.unlink()
    rc, out, err = run_cli(capsys, "--config", str(cfg), "catalog", "rebuild", "--from-s3")
    assert rc == 0 and f"{JOB}: 0 binlog segments fetched" in out and not pending(segs(cfg)), out + err
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=b"not a binlog")
    shutil.rmtree(cfg.parent / "store" / JOB / "binlog")
    rc, _, err = run_cli(capsys, "--config", str(cfg), "catalog", "rebuild", "--from-s3")
    assert rc == 1 and f"segment not fetched: s3://{bucket}/{PREFIX}{JOB}/binlog/{victim.path.name}" in err, err
    assert "Traceback" not in err
    assert victim.seq not in {s.seq for s in segs(cfg).segments()}
    assert not list((cfg.parent / "store" / JOB / "binlog").glob(".tmp-*"))


def _caught_up(w: World, store: SegmentStore, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the stream stopped"
    want = int(w.source.execute("SELECT @@gtid_binlog_pos")[0][0].split("-")[-1])
    last = store.last()
    return last is not None and int(str(last.manifest["gtid_end"]).split("-")[-1]) >= want


def test_an_outage_leaves_segments_pending_while_the_stream_runs(
    pitr_world: World, moto_s3_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    w = pitr_world
    server: MotoS3 = moto_s3_factory()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    cfg, bucket = clone(w, tmp_path, server)
    w.source.execute("CREATE DATABASE IF NOT EXISTS s3t; CREATE TABLE IF NOT EXISTS s3t.t (id INT PRIMARY KEY);")
    store = segs(cfg)
    proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(cfg), "stream", JOB],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})  # fmt: skip
    try:
        wait_for(lambda: _caught_up(w, store, proc) and not pending(store), 60, "the stream to ship its segments")
        server.stop(keep_dir=True)  # S3 is gone
        before = store.last()
        assert before is not None
        for i in range(3):
            w.source.execute(f"INSERT INTO s3t.t VALUES ({int(time.time() * 1000) % 10**9 + i});")
            time.sleep(1.2)
        wait_for(lambda: _caught_up(w, store, proc), 30, "the stream to commit during the outage")
        owed = pending(store)
        assert owed and owed[0].seq > before.seq and proc.poll() is None
        _, out, _ = run_cli(capsys, "--config", str(cfg), "status")
        assert "segment(s) pending for s3" in out, out
        server.start()  # back, on the same port (moto forgets its buckets)
        server.create_bucket(bucket)
        wait_for(lambda: not pending(store), 60, "the pending segments to be shipped after the outage")
        bk = bucket_of(cfg)
        for seg in owed:
            assert check_segment_copy(bk, JOB, seg) == []
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_object_lock_locks_segments_and_an_early_prune_plans(
    pitr_world: World, s3_env: MotoS3, tmp_path: Path
) -> None:
    w = pitr_world
    cfg, bucket = clone(w, tmp_path, s3_env, object_lock=True)
    config = load_config(cfg)
    events = EventLog(None)
    assert ship_pending(config, JOB, events)[1] == []
    assert_shipped(cfg)
    seg = segs(cfg).segments()[0]
    record = seg.s3_record()
    assert record is not None and record["lock"]["mode"] == "COMPLIANCE"
    head = s3_env.client().head_object(Bucket=bucket, Key=f"{PREFIX}{JOB}/binlog/{seg.manifest_path.name}")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    catalog = Catalog(cfg.parent / "state")
    try:  # only the second base goes to S3: the segments before its position are no longer needed there
        assert ship(config, JOB, Store(config.store_root).find(w.bases[1], JOB), catalog, events) == []
    finally:
        catalog.close()
    later = datetime.now(UTC) + timedelta(hours=2)  # past the 1 h window, inside the 1 day lock
    rows_, errors = prune_jobs(config, [JOB], events, now=later)
    s3_rows = [r for r in rows_ if r.where == "s3" and r.backup_id.startswith("segment")]
    assert s3_rows and all(r.action == "locked" for r in s3_rows) and not errors
    assert len(list_segments(bucket_of(cfg), JOB)) == len(w.segments())  # nothing deleted
    # past the recorded lock (moto's own clock still holds it): S3 refuses, a warning, never a failure
    rows_, errors = prune_jobs(config, [JOB], events, now=later + timedelta(days=2))
    s3_rows = [r for r in rows_ if r.where == "s3" and r.backup_id.startswith("segment")]
    assert s3_rows and all(r.action == "refused" for r in s3_rows) and not errors, [r.to_dict() for r in s3_rows]
    assert len(list_segments(bucket_of(cfg), JOB)) == len(w.segments())


def test_s3_keeps_what_its_bases_need_and_local_prune_waits_for_the_copy(
    pitr_world: World, s3_env: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = pitr_world
    cfg, _ = clone(w, tmp_path, s3_env)
    config = load_config(cfg)
    events = EventLog(None)
    later = datetime.now(UTC) + timedelta(hours=2)
    rows_, _ = prune_jobs(config, [JOB], events, dry_run=True, now=later)  # nothing copied yet: all kept locally
    local = [r for r in rows_ if r.where == "binlog"]
    assert local and all(r.keep and "not copied to S3 yet" in r.reasons for r in local)
    assert ship_pending(config, JOB, events)[1] == []
    catalog = Catalog(cfg.parent / "state")
    try:
        assert ship(config, JOB, Store(config.store_root).find(w.bases[1], JOB), catalog, events) == []
        arts = json.loads(catalog.backup(JOB, w.bases[1])["manifest"])["artifacts"]
    finally:
        catalog.close()
    anchor = min((BinlogPos.from_json(a["binlog_position"]) for a in arts), key=lambda p: p.key)
    expect = {s.seq for s in w.segments() if s.end <= anchor}
    assert expect and len(expect) < len(w.segments())
    rc, out, err = run_cli(capsys, "--config", str(cfg), "prune", "--dry-run")
    assert rc == 0, err  # now: everything is inside the window
    assert not [x for x in out.splitlines() if "segment" in x and " s3 " in x]
    rows_, errors = prune_jobs(config, [JOB], events, dry_run=True, now=later)
    planned = {int(r.backup_id.split()[1]) for r in rows_ if r.backup_id.startswith("segment") and r.where == "s3"
               and r.action == "delete"}
    assert planned == expect and not errors
    assert len(list_segments(bucket_of(cfg), JOB)) == len(w.segments())  # a dry run deletes nothing
    rows_, errors = prune_jobs(config, [JOB], events, now=later)
    assert not errors
    gone = {int(r.backup_id.split()[1]) for r in rows_ if r.where == "s3" and r.backup_id.startswith("segment")}
    assert gone == expect and all(r.done for r in rows_ if r.where == "s3" and r.backup_id.startswith("segment"))
    remote = list_segments(bucket_of(cfg), JOB)
    assert set(remote) == {s.seq for s in w.segments()} - expect  # the base's own segment and all after it stay


def test_a_new_chain_never_overwrites_another_segment_with_its_number(
    pitr_world: World, s3_env: MotoS3, tmp_path: Path
) -> None:
    """A new machine streaming before `catalog rebuild --from-s3` restarts at seq 1: its copy must not
    shadow the bucket's segment 00000001 (whose bytes differ)."""
    from backupd.errors import BackupdError
    from backupd.store.s3_segments import copy_segment

    w = pitr_world
    cfg, bucket = clone(w, tmp_path, s3_env)
    b = bucket_of(cfg)
    first = segs(cfg).segments()[0]
    copy_segment(b, JOB, first)
    key = f"{PREFIX}{JOB}/binlog/{first.path.name}"
    before = s3_env.client().head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"]
    other = SegmentStore(tmp_path / "new-machine", JOB)
    tmp = other.tmp_path(first.seq)
    data = first.path.read_bytes()[:-1] + b"\0"  # other bytes under the same number
    tmp.write_bytes(data)
    import hashlib

    man = {**first.manifest, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    seg = other.commit(tmp, first.seq, first.path.name[len(f"{first.seq:08d}.binlog"):], man)
    with pytest.raises(BackupdError, match="already holds another segment"):
        copy_segment(b, JOB, seg)
    assert s3_env.client().head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"] == before
    assert seg.s3_record() is None  # still pending: never recorded as copied
    copy_segment(b, JOB, first)  # the same bytes again (a lost record) are fine
