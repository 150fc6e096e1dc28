"""backupd.scratch: each server started for real, used for real, and gone (PID and directory) after stop."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_lib

from backupd.lab.s3 import MotoS3
from backupd.lab.sshd import SSHD
from backupd.scratch.base import ScratchError, ScratchServer, free_port, require_binary
from backupd.scratch.mariadb import MariaDB
from backupd.scratch.mongo import MongoServer
from backupd.scratch.redis import Redis
from tests.conftest import wait_for

MAX_START_SECONDS = 20.0  # a sanity bound on a shared 2-core machine; typical figures are printed


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _report(server: ScratchServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert server.start_seconds is not None
    with capsys.disabled():
        print(f"\n[scratch] {type(server).__name__} started in {server.start_seconds:.2f}s", end="")
    assert server.start_seconds < MAX_START_SECONDS


def _stop_and_check_gone(server: ScratchServer) -> None:
    pid, directory = server.pid, server.dir
    assert pid is not None and not _pid_gone(pid)
    assert directory.is_dir()
    server.stop()
    assert _pid_gone(pid), f"{type(server).__name__} pid {pid} still exists after stop()"
    assert not directory.exists(), f"{directory} left behind"
    assert not server.running


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_binary_is_one_clear_line() -> None:
    with pytest.raises(ScratchError, match=r"^scratch: no-such-daemon not found \(install pkg-x\)$"):
        require_binary("no-such-daemon", "pkg-x", sbin=True)


def test_failed_start_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    server = Redis(base_dir=tmp_path / "base")
    with pytest.raises(ScratchError, match="redis-server not found"):
        server.start()
    assert list((tmp_path / "base").iterdir()) == []


def test_mariadb_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    server = MariaDB().start()
    try:
        _report(server, capsys)
        assert server.socket.exists()
        server.execute("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, name TEXT)")
        server.execute("INSERT INTO t VALUES (1, 'tab\there'), (2, NULL)", database="shop")
        rows = server.execute("SELECT id, name FROM t ORDER BY id", database="shop")
        assert rows == [("1", "tab\there"), ("2", "NULL")]
        # Events need the scheduler on (WordPress plugins and our dumps both carry them).
        server.execute("CREATE EVENT shop.e ON SCHEDULE EVERY 1 DAY DO SELECT 1")
        assert server.execute("SELECT @@event_scheduler") == [("ON",)]

        server.create_user("reader", "s3cr'et", grants="SELECT", on="shop.*")
        assert server.dsn_for("reader", "shop") == f"mysql://reader:s3cr%27et@127.0.0.1:{server.port}/shop"
        opt = server.option_file_for("reader")
        assert opt.stat().st_mode & 0o777 == 0o600
        client = ["mariadb", f"--defaults-file={opt}", "-N", "-B", "shop"]
        ok = subprocess.run([*client, "-e", "SELECT COUNT(*) FROM t"], capture_output=True, text=True)
        assert (ok.returncode, ok.stdout) == (0, "2\n")
        denied = subprocess.run([*client, "-e", "DROP TABLE t"], capture_output=True, text=True)
        assert denied.returncode != 0 and "denied" in denied.stderr

        wrong = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "-h127.0.0.1",
                f"-P{server.port}",
                "-uroot",
                "-pwrong",
                "-e",
                "SELECT 1",
            ],
            capture_output=True,
            text=True,
        )
        assert wrong.returncode != 0 and "Access denied" in wrong.stderr
    finally:
        _stop_and_check_gone(server)


def test_two_mariadb_instances_are_separate(mariadb_factory: Callable[..., MariaDB]) -> None:
    first, second = mariadb_factory(), mariadb_factory()
    assert first.port != second.port and first.root_password != second.root_password
    first.execute("CREATE DATABASE only_first")
    names = {row[0] for row in second.execute("SHOW DATABASES")}
    assert "only_first" not in names


def test_sshd_login_and_rsync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = SSHD().start()
    try:
        _report(server, capsys)
        cfg = server.ssh_config()
        assert set(cfg) == {"host", "port", "user", "key_file", "known_hosts"}
        assert server.client_key.stat().st_mode & 0o777 == 0o600
        assert server.known_hosts.read_text().startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")

        ran = subprocess.run(
            [*server.ssh_argv(), server.destination, "echo ok"], capture_output=True, text=True, timeout=30
        )
        assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran.stderr

        # Strict checking is real: an empty known_hosts must refuse the connection.
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        argv = [a.replace(str(server.known_hosts), str(empty)) for a in server.ssh_argv()]
        refused = subprocess.run(
            [*argv, server.destination, "true"], capture_output=True, text=True, timeout=30
        )
        assert refused.returncode != 0 and "Host key verification failed" in refused.stderr

        src, dst = tmp_path / "src", tmp_path / "dst"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("alpha")
        (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
        synced = subprocess.run(
            ["rsync", "-a", "-e", shlex.join(server.ssh_argv()), f"{src}/", f"{server.destination}:{dst}/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert synced.returncode == 0, synced.stderr
        assert (dst / "a.txt").read_text() == "alpha"
        assert (dst / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    finally:
        _stop_and_check_gone(server)


def test_redis_replication_auth_and_link_break(capsys: pytest.CaptureFixture[str]) -> None:
    master = Redis(password="m4ster").start()
    replica = Redis(master=master).start()
    try:
        _report(master, capsys)
        _report(replica, capsys)
        replica.wait_replica_linked(timeout=15)
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(host=master.host, port=master.port, password="wrong").ping()

        master.client().set("greeting", "hello")
        wait_for(lambda: replica.client().get("greeting") == b"hello", what="key on replica")
        assert replica.client().info("replication")["role"] == "slave"

        master_pid, master_dir = master.pid, master.dir
        assert master_pid is not None
        master.kill()
        assert _pid_gone(master_pid) and master_dir.is_dir()  # kill keeps the dir for inspection
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "down", what="link down"
        )
        master.start()  # same port and dir: the replica links again
        replica.wait_replica_linked(timeout=15)
        assert replica.client().get("greeting") is None  # no persistence configured: master came back empty
    finally:
        _stop_and_check_gone(replica)
        _stop_and_check_gone(master)


def test_redis_port_collision_retries_on_another_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        server = Redis()
        server.port = busy  # as if free_port() had lost the race
        with server:
            assert server.port != busy
            assert server.client().ping()


class _StubbornRedis(Redis):
    stop_timeout = 0.5


def test_stop_escalates_to_sigkill() -> None:
    server = _StubbornRedis().start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    server.stop()
    assert _pid_gone(pid)


def test_interpreter_exit_stops_servers() -> None:
    code = "from backupd.scratch.redis import Redis\nr = Redis().start()\nprint(r.pid, r.dir, flush=True)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pid_text, directory = out.stdout.split()
    assert _pid_gone(int(pid_text))
    assert not Path(directory).exists()


def test_moto_s3_put_get(capsys: pytest.CaptureFixture[str]) -> None:
    server = MotoS3().start()
    try:
        _report(server, capsys)
        assert server.endpoint_url == f"http://127.0.0.1:{server.port}"
        server.create_bucket("scratch-bucket")
        s3 = server.client()
        s3.put_object(Bucket="scratch-bucket", Key="a/b.txt", Body=b"payload")
        assert s3.get_object(Bucket="scratch-bucket", Key="a/b.txt")["Body"].read() == b"payload"
    finally:
        _stop_and_check_gone(server)


def test_mongo_insert_find(capsys: pytest.CaptureFixture[str]) -> None:
    server = MongoServer().start()
    try:
        _report(server, capsys)
        assert server.kind in ("mongod", "nx-27017")
        assert server.uri == f"mongodb://127.0.0.1:{server.port}/"
        with server.client() as client:
            client.shop.orders.insert_many([{"n": 1}, {"n": 2}, {"n": 3}])
            assert client.shop.orders.count_documents({"n": {"$gte": 2}}) == 2
            assert client.shop.orders.find_one({"n": 3}, {"_id": 0}) == {"n": 3}
    finally:
        _stop_and_check_gone(server)


def test_session_fixtures_work_together(
    mariadb: MariaDB,
    sshd: SSHD,
    redis_replica: Redis,
    redis_master: Redis,
    moto_s3: MotoS3,
    mongo_server: MongoServer,
) -> None:
    assert mariadb.execute("SELECT 1") == [("1",)]
    assert sshd.running and moto_s3.running and mongo_server.running
    redis_master.client().set("fixture-key", "1")
    wait_for(lambda: redis_replica.client().get("fixture-key") == b"1", what="key on fixture replica")


def test_mariadb_restart_after_kill_keeps_data_with_long_base_dir(tmp_path: Path) -> None:
    base = tmp_path / ("deep-" * 16)  # a socket path over the 108-byte limit if it lived in the datadir
    server = MariaDB(base_dir=base).start()
    try:
        assert len(str(server.socket)) < 100
        server.execute("CREATE DATABASE kept; CREATE TABLE kept.t (x INT); INSERT INTO kept.t VALUES (7)")
        server.execute("FLUSH TABLES")
        port, pid = server.port, server.pid
        assert pid is not None
        server.kill()
        assert _pid_gone(pid)
        server.start()
        assert server.port == port
        assert server.execute("SELECT x FROM kept.t") == [("7",)]
    finally:
        socket_dir = server.socket.parent
        _stop_and_check_gone(server)
        assert not socket_dir.exists()
