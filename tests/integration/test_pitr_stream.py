"""`backupd stream JOB` against a real MariaDB with its binlog on: segments committed, each replayable alone by
the real `mariadb-binlog`, resumed exactly after kill -9, a server restart and a rotation; gaps reported."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backupd.engine.crypto import load_identities, unlocking
from backupd.formats.binlog import GTID, BinlogChecker, EventReader, Gtid, parse_gtid
from backupd.lab.content import write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB
from backupd.store.segments import Segment, SegmentStore, chains, check_segment, open_segment
from backupd.store.stream_state import read_state
from tests.conftest import wait_for
from tests.notify.conftest import start_receiver, stop_receiver

BINLOG_ARGS = ["--log-bin=mariadb-bin", "--binlog-format=ROW", "--server-id=1"]
REPL_GRANTS = "REPLICATION SLAVE, BINLOG MONITOR"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    with MariaDB(extra_args=BINLOG_ARGS) as server:
        yield server


class Env:
    """One job's config, store and a workload table in its own database."""

    def __init__(self, db: MariaDB, base: Path, **pitr: Any) -> None:
        self.db = db
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.database = f"pitr_{secrets.token_hex(4)}"
        self.user = f"st{secrets.token_hex(3)}"
        password = secrets.token_hex(8)
        db.create_user(self.user, password, REPL_GRANTS)
        self.password_file = write_secret(base / "pw", password)
        db.execute(f"CREATE DATABASE {self.database}")
        db.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64))", database=self.database)
        self.next_id = 1
        self.config = self.write(**pitr)

    def job(self, **pitr: Any) -> dict[str, Any]:
        return {
            "type": "mysql", "schedule": "0 3 * * *", "host": self.db.host, "port": self.db.port,
            "user": self.user, "password_file": str(self.password_file), "databases": [self.database],
            "pitr": {"enabled": True, "segment": "2s", "server_id": 4001, **pitr},
        }

    def write(self, settings: dict[str, Any] | None = None, **pitr: Any) -> Path:
        return write_config(self.base, {"db": self.job(**pitr)}, settings=settings)

    @property
    def store(self) -> SegmentStore:
        return SegmentStore(self.base / "store", "db")

    def insert(self, n: int = 1) -> None:
        values = ",".join(f"({i}, 'v{i}')" for i in range(self.next_id, self.next_id + n))
        self.db.execute(f"INSERT INTO t VALUES {values}", database=self.database)
        self.next_id += n

    def stream(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "backupd", "--config", str(self.config), "stream", "db"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )

    def committed_rows(self) -> int:
        return sum(int(s.manifest["transactions"]) for s in self.store.segments())


def state_of(env: Env) -> dict[str, Any]:
    return read_state(env.base / "state", "db") or {}


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def segment_gtids(seg: Segment) -> list[Gtid]:
    reader = EventReader(expect_magic=True)
    with open_segment(seg) as fh:
        evs = reader.feed(fh.read())
    return [parse_gtid(e)[0] for e in evs if e.type == GTID]


def all_gtids(store: SegmentStore) -> list[Gtid]:
    return [g for s in store.segments() for g in segment_gtids(s)]


def caught_up(store: SegmentStore, db: MariaDB) -> bool:
    """The last committed transaction is the server's last one."""
    gtids = all_gtids(store)
    return bool(gtids) and gtids[-1].seq >= server_gtids(db)


def server_gtids(db: MariaDB) -> int:
    """The server's last GTID seq in domain 0."""
    pos = db.execute("SELECT @@gtid_binlog_pos")[0][0]
    return int(pos.split("-")[-1])


def assert_chain_exact(store: SegmentStore) -> None:
    segs = store.segments()
    assert segs, "no segment committed"
    runs = list(chains(segs))
    assert len(runs) == 1, [(s.seq, s.follows, str(s.start), str(s.end)) for s in segs]
    seqs = [g.seq for g in all_gtids(store)]
    assert seqs == sorted(set(seqs)), "duplicate or out-of-order transactions"
    for seg in segs:
        assert check_segment(seg) == []
        assert seg.path.stat().st_mode & 0o777 == 0o600


def replay(seg: Segment, work: Path) -> subprocess.CompletedProcess[str]:
    plain = work / f"{seg.seq:08d}.binlog"
    with open_segment(seg) as fh:
        plain.write_bytes(fh.read())
    return subprocess.run(["mariadb-binlog", str(plain)], capture_output=True, text=True, check=False)


def test_stream_commits_segments_that_replay_alone(db: MariaDB, tmp_path: Path) -> None:
    env = Env(db, tmp_path, segment="1s")
    proc = env.stream()
    try:
        wait_for(lambda: state_of(env).get("connected"), 30, "the stream connected")
        for _ in range(8):  # a workload at a known pace: 4 rows per 0.4 s
            env.insert(4)
            time.sleep(0.4)
        wait_for(lambda: env.committed_rows() >= 12 + 2, 20, "the workload committed")  # +2: CREATEs
    finally:
        rc, out, err = stop(proc)
    assert rc == 0, err
    segs = env.store.segments()
    assert len(segs) >= 2, "a segment at least every `segment` seconds"
    assert_chain_exact(env.store)
    assert segs[0].follows is None and all(s.follows == p.seq for p, s in itertools.pairwise(segs))
    names = [e["event"] for e in events(out)]
    assert "pitr_stream_started" in names and names.count("pitr_segment") == len(segs)

    # each segment is a binlog file of its own: the real mariadb-binlog reads it alone
    for seg in segs:
        done = replay(seg, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "GTID" in done.stdout
        checker = BinlogChecker()
        with open_segment(seg) as fh:
            checker.feed(fh.read())
        assert checker.finish().ok
    # the stream's state: committed up to the server's position; `status` shows the stream
    state = read_state(tmp_path / "state", "db")
    assert state is not None and state["gaps"] == 0
    assert state["committed"] == segs[-1].manifest["end"]
    status = run_cli(env.config, "status")
    end = segs[-1].end
    assert "db: stream STOPPED, lag " in status.stdout and f"committed {end.file}:{end.pos}" in status.stdout
    shown = json.loads(run_cli(env.config, "status", "--json").stdout)[0]["stream"]
    assert shown["running"] is False and shown["committed"] == segs[-1].manifest["end"] and shown["gaps"] == 0

    # replayed (that database's events) into a fresh server, the segments give the same rows
    rows_live = db.execute(f"SELECT id, v FROM {env.database}.t ORDER BY id")
    assert len(rows_live) == env.next_id - 1
    files = [str(tmp_path / f"{s.seq:08d}.binlog") for s in segs]
    argv = ["mariadb-binlog", f"--database={env.database}"]
    sql = "".join(subprocess.run([*argv, f], capture_output=True, text=True, check=True).stdout for f in files)
    with MariaDB() as copy:
        client = subprocess.run(["mariadb", f"--defaults-file={copy.option_file}"], input=sql,
                                capture_output=True, text=True, check=False)
        assert client.returncode == 0, client.stderr[-2000:]
        assert copy.execute(f"SELECT id, v FROM {env.database}.t ORDER BY id") == rows_live


def our_seqs(env: Env) -> list[int]:
    return [g.seq for g in all_gtids(env.store)]


def test_kill_9_mid_segment_then_resume_without_loss_or_duplicates(db: MariaDB, tmp_path: Path) -> None:
    env = Env(db, tmp_path, segment="1m")
    proc = env.stream()
    env.insert(3)
    wait_for(lambda: state_of(env).get("open_transactions", 0) > 0, 20, "an open segment with transactions")
    proc.kill()  # kill -9 mid-segment
    proc.wait(timeout=30)
    assert env.store.segments() == [], "nothing committed before the segment was due"
    leftovers = [p.name for p in env.store.dir.iterdir()]
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers), leftovers
    env.insert(2)

    # restarted with the job's backups encrypted: the new segments are age ciphertext
    key = tmp_path / "age.key"
    made = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True, check=True)
    recipient = made.stderr.strip().split(": ", 1)[1]
    env.config = env.write(settings={"encryption": {"age_recipients": [recipient]}}, segment="1s")
    proc = env.stream()
    try:
        with unlocking(load_identities(key)):
            wait_for(lambda: caught_up(env.store, db), 30, "the restarted stream caught up")
    finally:
        rc, _, err = stop(proc)
    assert rc == 0, err
    assert not any(p.name.startswith(".tmp-") for p in env.store.dir.iterdir())
    segs = env.store.segments()
    assert all(s.path.name.endswith(".binlog.zst.age") and s.manifest["encrypted"] for s in segs)
    with unlocking(load_identities(key)):
        assert_chain_exact(env.store)
        seqs = our_seqs(env)
    assert seqs == list(range(1, server_gtids(db) + 1)), "every transaction exactly once"
    # the real age and zstd open it; the real mariadb-binlog reads it
    plain = tmp_path / "seg.binlog"
    age = subprocess.run(["age", "-d", "-i", str(key), str(segs[-1].path)], capture_output=True, check=True)
    plain.write_bytes(subprocess.run(["zstd", "-dc"], input=age.stdout, capture_output=True, check=True).stdout)
    assert subprocess.run(["mariadb-binlog", str(plain)], capture_output=True, check=False).returncode == 0


def test_rotation_and_server_restart_while_streaming(db: MariaDB, tmp_path: Path) -> None:
    env = Env(db, tmp_path, segment="1s")
    proc = env.stream()
    try:
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), 20, "first rows committed")
        db.execute("FLUSH BINARY LOGS")  # a rotation
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), 20, "rows after the rotation committed")
        db.stop(keep_dir=True)  # the server restarted under the stream
        time.sleep(1.5)
        db.start()
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), 60, "rows after the restart committed")
    finally:
        rc, out, err = stop(proc)
    assert rc == 0, err
    assert "pitr_link_lost" in [e["event"] for e in events(out)]
    assert_chain_exact(env.store)
    segs = env.store.segments()
    for seg in segs:  # never across a server binlog file: it ends in its own file or at the next one's start
        assert seg.end.file == seg.start.file or seg.end.pos == 4, (str(seg.start), str(seg.end))
        assert replay(seg, tmp_path).returncode == 0
    assert len({s.start.file for s in segs}) >= 3
    assert our_seqs(env)[-1] == server_gtids(db)
    rows = db.execute("SELECT COUNT(*) FROM t", database=env.database)[0][0]
    assert int(rows) == 6


def test_a_purged_binlog_is_a_gap_reported_not_hidden(db: MariaDB, tmp_path: Path) -> None:
    env = Env(db, tmp_path, segment="1s")
    proc = env.stream()
    try:
        env.insert(1)
        wait_for(lambda: caught_up(env.store, db), 20, "first rows committed")
    finally:
        assert stop(proc)[0] == 0
    last = env.store.last()
    assert last is not None
    end_before = str(last.end)
    db.execute("FLUSH BINARY LOGS")
    env.insert(3)  # never streamed: purged below
    db.execute("FLUSH BINARY LOGS")
    newest = db.execute("SHOW MASTER STATUS")[0][0]
    db.execute(f"PURGE BINARY LOGS TO '{newest}'")
    oldest = db.execute("SHOW BINARY LOGS")[0][0]  # the server may keep one more (its binlog checkpoint)
    assert oldest != last.end.file
    env.insert(1)
    receiver = start_receiver()
    env.config = env.write(settings={"notify": {"webhook_urls": [receiver.url()]}}, segment="1s")
    proc = env.stream()
    try:
        wait_for(lambda: state_of(env).get("gaps") == 1, 20, "the gap reported")
        wait_for(lambda: "pitr_gap" in receiver.events(), 20, "the pitr_gap notification")
        wait_for(lambda: caught_up(env.store, db), 20, "the new chain caught up")
    finally:
        rc, out, err = stop(proc)
    assert rc == 0, err
    gaps = [e for e in events(out) if e["event"] == "pitr_gap"]
    assert len(gaps) == 1 and "error 1236" in gaps[0]["reason"] and "purged" in gaps[0]["reason"], gaps
    assert gaps[0]["after"] == end_before
    stop_receiver(receiver)
    sent = next(r.json() for r in receiver.requests if r.json().get("event") == "pitr_gap")
    assert sent["job"] == "db" and "error 1236" in sent["error"]
    runs = list(chains(env.store.segments()))
    assert len(runs) == 2 and runs[1][0].follows is None and str(runs[1][0].start) == f"{oldest}:4"


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_servers_that_cannot_stream_are_refused_with_one_line(db: MariaDB, tmp_path: Path) -> None:
    env = Env(db, tmp_path / "noprivs")
    db.create_user(env.user, db.password_for(env.user), "SELECT")
    db.execute(f"REVOKE REPLICATION SLAVE, BINLOG MONITOR ON *.* FROM '{env.user}'@'%'")
    done = run_cli(env.config, "check-config", "--connect")  # (`stream` runs the same check: below)
    assert done.returncode != 0
    assert "lacks REPLICATION SLAVE and BINLOG MONITOR" in done.stderr and "Traceback" not in done.stderr

    env = Env(db, tmp_path / "statement")
    db.execute("SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        done = run_cli(env.config, "stream", "db")
    finally:
        db.execute("SET GLOBAL binlog_format = 'ROW'")
    assert done.returncode != 0 and "binlog_format is STATEMENT, pitr needs ROW" in done.stderr, done.stderr

    db.execute("SET GLOBAL log_bin_compress = ON")
    try:
        done = run_cli(env.config, "stream", "db")
    finally:
        db.execute("SET GLOBAL log_bin_compress = OFF")
    assert done.returncode != 0 and "log_bin_compress is ON" in done.stderr, done.stderr

    with MariaDB() as nolog:
        env = Env(nolog, tmp_path / "nolog")
        done = run_cli(env.config, "stream", "db")
    assert done.returncode != 0 and "log_bin is OFF" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_via_ssh_through_the_real_sshd(db: MariaDB, sshd: SSHD, tmp_path: Path) -> None:
    env = Env(db, tmp_path)
    job = {**env.job(), "via_ssh": True, "ssh": sshd.ssh_config()}
    env.config = write_config(tmp_path, {"db": job})
    proc = env.stream()
    try:
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), 30, "rows committed through the SSH host")
        second = run_cli(env.config, "stream", "db")  # the stream's own lock: one stream per job
        assert second.returncode == 75 and "db.stream: already running" in second.stderr, second.stderr
    finally:
        rc, out, err = stop(proc)
    assert rc == 0, err
    assert "via ssh" in next(e["server"] for e in events(out) if e["event"] == "pitr_streaming")
    assert_chain_exact(env.store)
    nopitr = write_config(tmp_path / "nopitr", {"db": {**job, "pitr": {"enabled": False}}})
    done = run_cli(nopitr, "stream", "db")
    assert done.returncode == 2 and "does not stream a log" in done.stderr, done.stderr
    done = run_cli(env.config, "check-config", "--connect")
    assert done.returncode == 0 and "via ssh" in done.stdout and "ROW binlog" in done.stdout, done.stderr


def test_the_daemon_supervises_the_stream(db: MariaDB, tmp_path: Path) -> None:
    from tests.integration.test_daemon import DaemonProc

    env = Env(db, tmp_path, segment="1m")
    job = {**env.job(segment="1m"), "schedule": "@yearly"}
    env.config = write_config(tmp_path, {"db": job}, settings={"http": {"listen": "127.0.0.1:0"}})
    daemon = DaemonProc(env.config, env={"PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        first = daemon.wait_event("stream_started", job="db")
        wait_for(lambda: state_of(env).get("connected"), 30, "the stream connected")
        os.kill(first["pid"], signal.SIGKILL)  # the daemon restarts a stream that died
        again = daemon.wait_event("stream_started", timeout=30, job="db", restarts=1)
        assert again["pid"] != first["pid"]
        wait_for(lambda: state_of(env).get("pid") == again["pid"] and state_of(env)["connected"], 30, "reconnected")
        env.insert(3)
        wait_for(lambda: state_of(env).get("open_transactions", 0) >= 3, 30, "rows in the open segment")
        status, body = daemon.get("/metrics")
        assert status == 200 and b'backupd_pitr_lag_seconds{backup_job="db"}' in body
        assert b'backupd_pitr_stream_running{backup_job="db"} 1.0' in body
        pitr_lines = b"\n".join(x for x in body.splitlines() if b"backupd_pitr" in x) + b"\n"
        lint = subprocess.run(["promtool", "check", "metrics"], input=pitr_lines, capture_output=True, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert caught_up(env.store, db) is False  # a one-minute segment: still open
    finally:
        rc = daemon.stop(timeout=60)
    assert rc == 0
    assert "stream_stopped" in [e["event"] for e in daemon.events()]
    assert caught_up(env.store, db), "the open segment was committed when the daemon stopped"
    assert_chain_exact(env.store)


def test_a_refused_segment_is_streamed_again_with_its_gtids_once(
    db: MariaDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment refused by its check (one event's bytes corrupted once, in process) is never committed, and
    its transactions come again: the next segments' GTID lists start from the committed state, not from the
    refused transactions (which made every retry fail "GTID ... does not follow ..." before)."""
    import io
    import threading

    from backupd.actions.stream import stream_job
    from backupd.config import load_config
    from backupd.logs import EventLog
    from backupd.sources.mysql.stream.segmenter import OpenSegment

    env = Env(db, tmp_path / "refuse", segment="1s")
    add = OpenSegment.add
    corrupted: list[int] = []

    def corrupt_once(self: OpenSegment, evs: list[bytes], first_ts: int) -> None:
        if not corrupted and self.follows is not None:  # mid-chain (a new chain's state comes from the server)
            last = bytearray(evs[-1])
            last[-6] ^= 0xFF  # inside the event: its CRC32 no longer matches
            evs = [*evs[:-1], bytes(last)]
            corrupted.append(self.seq)
        add(self, evs, first_ts)

    monkeypatch.setattr(OpenSegment, "add", corrupt_once)
    out = io.StringIO()
    stop = threading.Event()
    config = load_config(env.config)
    thread = threading.Thread(target=stream_job, args=(config, "db", stop, EventLog("json", stream=out)))
    thread.start()
    try:
        wait_for(lambda: caught_up(env.store, db), timeout=20)
        env.insert(3)
        wait_for(lambda: caught_up(env.store, db), timeout=20)
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), timeout=20)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    names = [e["event"] for e in events(out.getvalue())]
    assert corrupted and names.count("pitr_segment_refused") == 1, names
    assert_chain_exact(env.store)
    seqs = [g.seq for g in all_gtids(env.store)]  # every transaction exactly once, none left out
    assert seqs == list(range(seqs[0], server_gtids(db) + 1))


def test_log_bin_compress_switched_on_while_streaming_stops_the_stream(db: MariaDB, tmp_path: Path) -> None:
    """A compressed query event hides its statement (a DDL the restore must refuse): one line, non-zero."""
    env = Env(db, tmp_path / "compress")
    proc = env.stream()
    try:
        env.insert(2)
        wait_for(lambda: caught_up(env.store, db), timeout=20)
        db.execute("SET GLOBAL log_bin_compress = ON")
        try:  # a statement longer than log_bin_compress_min_len (256 bytes) is written compressed
            db.execute(f"ALTER TABLE t ADD COLUMN c INT COMMENT '{'x' * 400}'", database=env.database)
        finally:
            db.execute("SET GLOBAL log_bin_compress = OFF")
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode != 0 and "a compressed query event: log_bin_compress is ON" in err, err
    assert "Traceback" not in err
    assert_chain_exact(env.store)
