"""The Redis job end to end: real master + replica, the replica's dump reached through a real sshd, the
real CLI in a subprocess, the artifact checked by redis-check-rdb and loaded into a third Redis.

Fault tests each assert: exit 1, one stderr line naming the host and the reason, nothing committed, the
previous good backup untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from backupd.errors import StepError
from backupd.lab.content import write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.base import free_port
from backupd.scratch.redis import Redis
from backupd.sources.redis.config import RedisJob
from backupd.sources.redis.dump import fresh_bgsave, health_problems
from tests.conftest import run_cli as run_cli_here
from tests.conftest import wait_for

PASSWORD = "s3cr#t 'pw\""  # quotes, space and '#' must survive the password_file path
N = 500  # keys per type: 6 types -> 3000 keys


def fill(conn: redis_lib.Redis, n: int = N) -> None:
    """Keys of every type, a third with a (long) TTL so none expire during the test."""
    pipe = conn.pipeline(transaction=False)
    for i in range(n):
        ttl = 3600 if i % 3 == 0 else None
        pipe.set(f"str:{i}", f"value-{i}-" + "x" * (i % 50), ex=ttl)
        pipe.hset(f"hash:{i}", mapping={"a": str(i), "b": "bee", "n": i * 2})
        pipe.rpush(f"list:{i}", *[f"item{j}" for j in range(i % 7 + 1)])
        pipe.sadd(f"set:{i}", *[f"m{j}" for j in range(i % 5 + 1)])
        pipe.zadd(f"zset:{i}", {f"z{j}": j * 1.5 for j in range(i % 4 + 1)})
        pipe.xadd(f"stream:{i}", {"event": "e", "i": str(i)})
        if ttl:
            for k in ("hash", "list", "set", "zset", "stream"):
                pipe.expire(f"{k}:{i}", ttl)
        if i % 200 == 199:
            pipe.execute()
    pipe.execute()


def wait_replica_caught_up(master: Redis, replica: Redis) -> None:
    with master.client() as m, replica.client() as r:
        target = m.info("replication")["master_repl_offset"]
        wait_for(lambda: r.info("replication").get("slave_repl_offset", -1) >= target, what="replica offset")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Redis, Redis]]:
    """A password-protected master + replica with 3000 keys; shared by this module, never broken."""
    base = tmp_path_factory.mktemp("redis-pair")
    with Redis(base, password=PASSWORD) as master:
        with master.client() as c:
            fill(c)
        with Redis(base, master=master, password=PASSWORD) as replica:
            replica.wait_replica_linked()
            wait_replica_caught_up(master, replica)
            yield master, replica


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store + state dir shared by the module: the good backup lives here, faults must not touch it."""
    base = tmp_path_factory.mktemp("redis-store")
    secret = write_secret(base / "redis.password", PASSWORD)
    secret.chmod(0o600)
    return {"store": base / "store", "state": base / "state", "secret": secret}


def job_for(server: Redis, sshd: SSHD | None, shared: dict[str, Path], **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"type": "redis", "schedule": "@daily", "host": server.host, "port": server.port}
    if server.password is not None:
        job["password_file"] = str(shared["secret"])
    if sshd is not None:
        job["ssh"] = sshd.ssh_config()
    job.update(extra)
    return job


def make_config(tmp: Path, shared: dict[str, Path], job: dict[str, Any]) -> Path:
    settings = {"storage": {"root": str(shared["store"])}, "state": {"dir": str(shared["state"])}}
    return write_config(tmp, {"r": job}, settings=settings)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def store_snapshot(store: Path) -> dict[str, str]:
    """Every file under the job's store dir with its sha256: 'previous backups untouched' means equal."""
    root = store / "r"
    out: dict[str, str] = {}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def backups(store: Path) -> list[Path]:
    root = store / "r"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def decompress(src: Path, dest: Path) -> Path:
    subprocess.run(["zstd", "-q", "-d", "-f", str(src), "-o", str(dest)], check=True)
    return dest


class SeededRedis(Redis):
    """A fresh redis-server whose dir holds our RDB as dump.rdb before it starts (so it loads it)."""

    def __init__(self, rdb: Path, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.seed = rdb

    def _prepare(self) -> None:
        super()._prepare()
        shutil.copyfile(self.seed, self.dir / "dump.rdb")


@pytest.fixture(scope="module")
def good_backup(
    pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two runs through the real CLI (the second one exercises the rsync delta); returns the facts."""
    _, replica = pair
    cfg = make_config(tmp_path_factory.mktemp("cfg-good"), shared, job_for(replica, sshd, shared))
    first = run_cli(cfg, "run", "r")
    assert first.returncode == 0, first.stderr
    with pair[0].client() as c:
        c.set("added-after-first-run", "yes")
    wait_replica_caught_up(*pair)
    second = run_cli(cfg, "run", "r")
    assert second.returncode == 0, second.stderr
    assert PASSWORD not in first.stdout + first.stderr + second.stdout + second.stderr
    dirs = backups(shared["store"])
    assert len(dirs) == 2
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    return {"dirs": dirs, "manifests": manifests, "config": cfg}


def test_backup_loads_into_fresh_redis(good_backup: dict[str, Any], pair: tuple[Redis, Redis], tmp_path: Path) -> None:
    _, replica = pair
    latest: Path = good_backup["dirs"][-1]
    manifest = good_backup["manifests"][-1]
    src = manifest["source"]
    assert src["role"] == "slave" and src["master_link_status"] == "up"
    assert src["lastsave"] > src["lastsave_before"]
    assert src["redis_version"] and src["slave_repl_offset"] > 0
    assert src["rdb_path"] == str(replica.rdb_path) and src["file_host"].startswith("127.0.0.1:")
    expected = 6 * N + 1
    assert src["keyspace"]["db0"]["keys"] == expected
    art = manifest["artifacts"][0]
    assert art["file"] == "dump.rdb.zst" and art["format"] == "redis-rdb"
    assert art["verification"]["ok"] and art["facts"]["checksum"] == "ok"
    assert art["facts"]["keys"] == expected and art["facts"]["keys_source"] == "redis-check-rdb"
    assert src["redis_check_rdb"]["expires"] == 6 * len(range(0, N, 3))
    # the second run reused the first copy: rsync's delta matched most of the file
    matched = int(src["rsync"]["Matched data"].split()[0].replace(",", ""))
    assert matched > 0, src["rsync"]

    rdb = decompress(latest / "dump.rdb.zst", tmp_path / "restored.rdb")
    check = subprocess.run(["redis-check-rdb", str(rdb)], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and f"{expected} keys read" in check.stdout, check.stdout

    with SeededRedis(rdb, tmp_path / "fresh") as fresh, fresh.client(decode_responses=True) as c:
        assert c.dbsize() == expected
        assert c.get("str:7") == "value-7-" + "x" * 7
        assert c.hgetall("hash:10") == {"a": "10", "b": "bee", "n": "20"}
        assert c.lrange("list:5", 0, -1) == [f"item{j}" for j in range(6)]
        assert c.smembers("set:3") == {"m0", "m1", "m2", "m3"}
        assert c.zrange("zset:2", 0, -1, withscores=True) == [("z0", 0.0), ("z1", 1.5), ("z2", 3.0)]
        assert c.xrange("stream:9")[0][1] == {"event": "e", "i": "9"}
        assert c.get("added-after-first-run") == "yes"
        assert 3000 < c.ttl("str:3") <= 3600 and c.ttl("str:4") == -1
        assert c.type("stream:1") == "stream"

    # the stored artifact re-verifies (stats recomputed from the file match the manifest)
    out = run_cli(good_backup["config"], "verify", "r")
    assert out.returncode == 0, out.stdout + out.stderr

    # check-config --connect reports the role over the protocol
    out = run_cli(good_backup["config"], "check-config", "--connect")
    assert out.returncode == 0 and "role slave, link up" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------- faults


def assert_refused(shared: dict[str, Path], cfg: Path, host: str, *reason: str) -> str:
    before = store_snapshot(shared["store"])
    assert before, "the good backup must exist before a fault test"
    proc = run_cli(cfg, "run", "r")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("backupd: job r, host ") and f"host {host}" in line, line
    for r in reason:
        assert r in line, line
    assert "Traceback" not in proc.stderr and PASSWORD not in proc.stdout + proc.stderr
    assert store_snapshot(shared["store"]) == before
    assert not [p for p in (shared["store"] / "r").iterdir() if p.name.startswith(".partial")]
    return line


def test_refuses_master_when_replica_required(
    good_backup: dict[str, Any], pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path: Path
) -> None:
    master, _ = pair
    cfg = make_config(tmp_path, shared, job_for(master, sshd, shared))
    assert_refused(shared, cfg, f"127.0.0.1:{master.port}", "step health", "role is master")


def test_refuses_replica_with_link_down(
    good_backup: dict[str, Any],
    redis_factory: Callable[..., Redis],
    sshd: SSHD,
    shared: dict[str, Path],
    tmp_path: Path,
) -> None:
    master = redis_factory()
    replica = redis_factory(master=master)
    replica.wait_replica_linked()
    master.stop()
    with replica.client() as c:
        wait_for(lambda: c.info("replication")["master_link_status"] == "down", what="link down")
    cfg = make_config(tmp_path, shared, job_for(replica, sshd, shared))
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", "master_link_status is down")


def test_refuses_failed_bgsave(
    good_backup: dict[str, Any],
    redis_factory: Callable[..., Redis],
    sshd: SSHD,
    shared: dict[str, Path],
    tmp_path: Path,
) -> None:
    """dump.rdb replaced by a directory: the save's final rename() fails even as root."""
    master = redis_factory()
    with master.client() as c:
        fill(c, 20)
    replica = redis_factory(master=master)
    replica.wait_replica_linked()
    replica.rdb_path.unlink(missing_ok=True)
    replica.rdb_path.mkdir()
    cfg = make_config(tmp_path, shared, job_for(replica, sshd, shared))
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", "step bgsave", "rdb_last_bgsave_status is err")


def test_config_renamed_needs_rdb_path(
    good_backup: dict[str, Any],
    redis_factory: Callable[..., Redis],
    sshd: SSHD,
    shared: dict[str, Path],
    tmp_path: Path,
) -> None:
    master = redis_factory()
    with master.client() as c:
        fill(c, 20)
    replica = redis_factory(master=master, extra_args=["--rename-command", "CONFIG", ""])
    replica.wait_replica_linked()
    cfg = make_config(tmp_path / "a", shared, job_for(replica, sshd, shared))
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", "step locate", "CONFIG GET is unavailable", "rdb_path")
    # with rdb_path the same server backs up fine
    cfg = make_config(tmp_path / "b", shared, job_for(replica, sshd, shared, rdb_path=str(replica.rdb_path)))
    before = len(backups(shared["store"]))
    proc = run_cli(cfg, "run", "r")
    assert proc.returncode == 0, proc.stderr
    assert len(backups(shared["store"])) == before + 1
    # leave the store as the other fault tests expect it: drop the extra backup we just made
    shutil.rmtree(backups(shared["store"])[-1])


def test_wrong_password(
    good_backup: dict[str, Any], pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path: Path
) -> None:
    _, replica = pair
    bad = write_secret(tmp_path / "bad.password", "not-the-password")
    cfg = make_config(tmp_path, shared, job_for(replica, sshd, shared, password_file=str(bad)))
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", "step connect", "authentication failed")


def test_ssh_refused(
    good_backup: dict[str, Any], pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path: Path
) -> None:
    _, replica = pair
    job = job_for(replica, sshd, shared)
    port = free_port()
    job["ssh"] = {**job["ssh"], "port": port}
    cfg = make_config(tmp_path, shared, job)
    assert_refused(shared, cfg, f"127.0.0.1:{port}", "SSH connection refused")


@pytest.fixture(scope="module")
def fresh_rdb(good_backup: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An intact RDB from the good backup, to corrupt in copies."""
    base = tmp_path_factory.mktemp("rdb")
    return decompress(good_backup["dirs"][-1] / "dump.rdb.zst", base / "good.rdb")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "CRC mismatch"),
        ("truncate", "truncated"),
        ("deep", "step redis-check-rdb"),
    ],
)
def test_corrupt_copy_is_refused(
    damage: str,
    reason: str,
    fresh_rdb: Path,
    pair: tuple[Redis, Redis],
    sshd: SSHD,
    shared: dict[str, Path],
    tmp_path: Path,
) -> None:
    """rdb_path points (over SSH) at a damaged copy with a fresh mtime; bgsave = false so it is used."""
    _, replica = pair
    bad = tmp_path / "dump.rdb"
    if damage == "deep":  # CRC intact, a value cut short: only a full decode finds it
        shutil.copyfile(Path(__file__).parents[1] / "fixtures" / "redis-rdb" / "corrupt_empty_keys.rdb", bad)
    else:
        data = bytearray(fresh_rdb.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:  # cut 100+ bytes, never where the new end would look like an EOF opcode and its CRC (0xFF + 8)
            cut = 100
            while data[len(data) - cut - 9] == 0xFF:
                cut += 1
            data = data[: len(data) - cut]
        bad.write_bytes(bytes(data))
    job = job_for(replica, sshd, shared, bgsave=False, max_age="1h", rdb_path=str(bad))
    cfg = make_config(tmp_path / "cfg", shared, job)
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", reason)


def test_stale_file_is_refused(
    fresh_rdb: Path, pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path: Path
) -> None:
    """BGSAVE succeeds, but rdb_path names an older file: its RDB ctime predates our BGSAVE."""
    _, replica = pair
    old = tmp_path / "old.rdb"
    shutil.copyfile(fresh_rdb, old)
    cfg = make_config(tmp_path / "cfg", shared, job_for(replica, sshd, shared, rdb_path=str(old)))
    assert_refused(shared, cfg, f"127.0.0.1:{replica.port}", "stale file")


def test_old_file_without_bgsave_is_refused(
    fresh_rdb: Path, pair: tuple[Redis, Redis], sshd: SSHD, shared: dict[str, Path], tmp_path: Path
) -> None:
    _, replica = pair
    old = tmp_path / "old.rdb"
    shutil.copyfile(fresh_rdb, old)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    job = job_for(replica, sshd, shared, bgsave=False, max_age="1h", rdb_path=str(old))
    cfg = make_config(tmp_path / "cfg", shared, job)
    assert_refused(shared, cfg, str(sshd.ssh_config()["host"]), "step freshness", "older than max_age 3600s")


# ---------------------------------------------------------------- copy: file replaced mid-copy, second pass


def own_dirs(tmp_path: Path, secret: Path | None = None) -> dict[str, Path]:
    """A store and state of the test's own (the module's shared good backup stays out of it)."""
    return {"store": tmp_path / "store", "state": tmp_path / "state", "secret": secret or tmp_path / "unused"}


def _inprocess_run(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]], str]:
    rc, out, err = run_cli_here(capsys, "--config", str(cfg), "run", "r")
    return rc, [json.loads(x) for x in out.splitlines() if x.startswith("{")], err


def _replace_after_copy(monkeypatch: pytest.MonkeyPatch, src: Path, times: int) -> list[int]:
    """Let rsync copy, then swap the source for a same-content file (new inode), as a save landing mid-copy
    does: the stat after the copy must see it."""
    import backupd.sources.redis.fetch as redis_source

    real = redis_source.follow
    calls: list[int] = []

    def follow_then_replace(directory: Path, proc: subprocess.Popen[bytes], sink: Callable[[bytes], None]) -> Any:
        followed = real(directory, proc, sink)
        proc.wait()
        calls.append(1)
        if len(calls) <= times:
            tmp = src.with_name("incoming.rdb")
            shutil.copyfile(src, tmp)
            os.replace(tmp, src)
        return followed

    monkeypatch.setattr(redis_source, "follow", follow_then_replace)
    return calls


@pytest.mark.parametrize("times", [1, 2])
def test_file_replaced_during_copy_is_copied_again_once(
    times: int,
    fresh_rdb: Path,
    pair: tuple[Redis, Redis],
    sshd: SSHD,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, replica = pair
    src = tmp_path / "dump.rdb"
    shutil.copyfile(fresh_rdb, src)
    own = own_dirs(tmp_path, write_secret(tmp_path / "pw", PASSWORD))
    job = job_for(replica, sshd, own, bgsave=False, max_age="1h", rdb_path=str(src))
    cfg = make_config(tmp_path / "cfg", own, job)
    calls = _replace_after_copy(monkeypatch, src, times)
    rc, events, err = _inprocess_run(cfg, capsys)
    warnings = [e for e in events if e["event"] == "warning" and "changed during copy" in e.get("message", "")]
    if times == 1:
        assert rc == 0, err
        assert len(calls) == 2 and len(warnings) == 1
        [b] = backups(own["store"])
        assert decompress(b / "dump.rdb.zst", tmp_path / "out.rdb").read_bytes() == fresh_rdb.read_bytes()
    else:
        assert rc == 1 and "changed during the copy twice" in err and "step rsync" in err, err
        assert len(calls) == 2 and len(warnings) == 1
        assert backups(own["store"]) == []
        assert not [p for p in (own["store"] / "r").iterdir() if p.name.startswith(".partial")]


def test_copy_not_followed_falls_back_to_a_second_pass(
    fresh_rdb: Path,
    pair: tuple[Redis, Redis],
    sshd: SSHD,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the bytes read during the copy cannot be proven to be the copy, the staged file is read again."""
    import backupd.sources.redis.fetch as redis_source

    _, replica = pair
    own = own_dirs(tmp_path, write_secret(tmp_path / "pw", PASSWORD))
    cfg = make_config(tmp_path / "cfg", own, job_for(replica, sshd, own))
    monkeypatch.setattr(redis_source, "follow", lambda directory, proc, sink: sink(b"garbage, not the copy"))
    rc, events, err = _inprocess_run(cfg, capsys)
    assert rc == 0, err
    assert any(e.get("message") == "second pass" for e in events)
    [b] = backups(own["store"])
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["source"]["copy_followed"] is False
    assert manifest["artifacts"][0]["facts"]["keys_source"] == "redis-check-rdb"
    rdb = decompress(b / "dump.rdb.zst", tmp_path / "out.rdb")
    staged = tmp_path / "state" / "staging" / "r" / "redis" / "dump.rdb"
    assert rdb.read_bytes() == staged.read_bytes() and rdb.read_bytes()[:5] == b"REDIS"
    assert run_cli(cfg, "verify", "r").returncode == 0


def test_bwlimit_caps_the_copy_rate(
    redis_factory: Callable[..., Redis], sshd: SSHD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[ssh] bwlimit` reaches rsync: 640 KiB of RDB at 256 KiB/s cannot take less than ~2 s."""
    server = redis_factory()
    with server.client() as c:
        for i in range(10):
            c.set(f"blob:{i}", os.urandom(64 << 10))
        c.save()
    own = own_dirs(tmp_path)
    job = job_for(server, sshd, own, require_replica=False, bgsave=False, max_age="1h")
    job["ssh"]["bwlimit"] = "256"
    cfg = make_config(tmp_path / "cfg", own, job)
    t0 = time.monotonic()
    rc, _, err = _inprocess_run(cfg, capsys)
    took = time.monotonic() - t0
    assert rc == 0, err
    size = server.rdb_path.stat().st_size
    assert size > 640 << 10
    assert took >= 0.8 * size / (256 << 10), f"{size} bytes in {took:.2f}s: the limit did not apply"


def test_key_named_like_the_verdict_cannot_pass_a_corrupt_file(
    redis_factory: Callable[..., Redis], sshd: SSHD, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-check-rdb prints the key it failed on: a key named "RDB looks OK" must not read as its verdict.
    The checksum trailer is zeroed (what `rdbchecksum no` writes), so only the full decode finds the damage."""
    server = redis_factory()
    with server.client() as c:
        for i in range(200):
            c.set(f"k{i}", "v" * 30)
        c.set("RDB looks OK", "abcdefghij")  # short: stored as a plain string, not LZF
        c.save()
    data = bytearray(server.rdb_path.read_bytes())
    at = data.find(b"RDB looks OK") + len(b"RDB looks OK")
    data[at] = 0xC3  # the value's length byte now claims an LZF string that is not there
    data[-8:] = b"\0" * 8
    bad = tmp_path / "dump.rdb"
    bad.write_bytes(bytes(data))
    own = own_dirs(tmp_path)
    job = job_for(server, sshd, own, require_replica=False, bgsave=False, max_age="1h", rdb_path=str(bad))
    rc, _, err = _inprocess_run(make_config(tmp_path / "cfg", own, job), capsys)
    assert rc == 1 and "step redis-check-rdb" in err, err
    assert backups(own["store"]) == []


def test_redis_error_is_reported_at_once_while_ssh_still_connects(
    pair: tuple[Redis, Redis], sshd: SSHD, tmp_path: Path
) -> None:
    """The SSH handshake runs beside the Redis steps; when Redis refuses first, the run ends with Redis's
    one-line error, without waiting for (or tripping over) an SSH connect that is still hanging."""
    _, replica = pair
    bad = write_secret(tmp_path / "bad.password", "not-the-password")
    own = own_dirs(tmp_path, bad)
    with socket.socket() as silent:  # accepts TCP (kernel backlog), never sends an SSH banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        job = job_for(replica, sshd, own, password_file=str(bad))
        job["ssh"] = {**job["ssh"], "port": silent.getsockname()[1]}
        t0 = time.monotonic()
        proc = run_cli(make_config(tmp_path / "cfg", own, job), "run", "r")
        took = time.monotonic() - t0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "step connect" in lines[0] and "authentication failed" in lines[0], lines[0]
    assert took < 10, f"waited {took:.1f}s for the SSH connect"


# ---------------------------------------------------------------- BGSAVE retry logic against a real server


def _slow_replica(redis_factory: Callable[..., Redis], keys: int, delay_us: int) -> tuple[Redis, RedisJob]:
    master = redis_factory()
    with master.client() as c:
        pipe = c.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"k{i}", i)
        pipe.execute()
    replica = redis_factory(master=master)
    replica.wait_replica_linked()
    with replica.client() as c:
        c.config_set("rdb-key-save-delay", delay_us)  # a test knob of redis-server: slow saves on demand
    job = RedisJob(type="redis", schedule="@daily", host=replica.host, port=replica.port)
    return replica, job


def test_bgsave_waits_for_running_save_and_schedules_behind_aof_rewrite(
    redis_factory: Callable[..., Redis],
) -> None:
    replica, job = _slow_replica(redis_factory, 2000, 1500)  # someone else's save: ~3 s
    with replica.client() as c:
        c.bgsave()
        c.config_set("rdb-key-save-delay", 0)  # ours (forked later) is fast
        assert c.info("persistence")["rdb_bgsave_in_progress"] == 1
        res = fresh_bgsave(c, job, 30)
        assert res.waited_for_running and not res.scheduled and res.lastsave > res.lastsave_before

        c.config_set("rdb-key-save-delay", 1000)
        c.bgrewriteaof()  # an AOF rewrite child (~2 s): plain BGSAVE is refused, BGSAVE SCHEDULE is not
        c.config_set("rdb-key-save-delay", 0)
        assert c.info("persistence")["aof_rewrite_in_progress"] == 1
        res = fresh_bgsave(c, job, 30)
        assert res.scheduled and res.lastsave > res.lastsave_before
        assert c.info("persistence")["rdb_last_bgsave_status"] == "ok"


def test_bgsave_timeout_is_reported(redis_factory: Callable[..., Redis]) -> None:
    replica, job = _slow_replica(redis_factory, 2000, 1000)  # ~2 s per save
    with replica.client() as c:
        with pytest.raises(StepError) as err:
            fresh_bgsave(c, job, 1)
        assert "did not finish within 1s" in str(err.value) and f"127.0.0.1:{replica.port}" in str(err.value)
        c.config_set("rdb-key-save-delay", 0)
        wait_for(lambda: c.info("persistence")["rdb_bgsave_in_progress"] == 0, what="save to end")


def test_health_problems_name_each_field() -> None:
    ok = {"role": "slave", "master_link_status": "up", "master_sync_in_progress": 0, "loading": 0}
    assert health_problems(ok, True) == []
    assert health_problems({**ok, "role": "master"}, False) == []
    assert "master_sync_in_progress" in health_problems({**ok, "master_sync_in_progress": 1}, True)[0]
    assert "async_loading" in health_problems({**ok, "async_loading": 1}, True)[0]
    assert "loading is 1" in health_problems({**ok, "loading": 1}, True)[0]


def test_fresh_bgsave_ctime_never_before_request_at_second_boundaries(redis_factory: Callable[..., Redis]) -> None:
    """Back-to-back saves each start just after a second boundary, where time(NULL) (the RDB's ctime) can
    trail the TIME command by a tick: the recorded request time must never be later than the ctime."""
    from backupd.formats.rdb import RdbChecker

    server = redis_factory()
    job = RedisJob(type="redis", schedule="@daily", host=server.host, port=server.port, require_replica=False)
    with server.client() as c:
        c.set("k", "v")
        path = Path(c.config_get("dir")["dir"]) / c.config_get("dbfilename")["dbfilename"]
        for _ in range(12):
            res = fresh_bgsave(c, job, 30)
            checker = RdbChecker()
            checker.feed(path.read_bytes())
            result = checker.finish()
            assert result.ok, result.errors
            assert result.facts["ctime"] >= res.requested_at, (result.facts["ctime"], res)
