"""The WordPress job end to end: a real MariaDB, a real sshd + rsync, the real CLI in a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backupd.lab.content import make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB
from tests.conftest import wait_for

TABLES = ["wp_audit", "wp_blobs", "wp_empty", "wp_options", "wp_postmeta", "wp_posts", "wp_users"]


@dataclass
class Site:
    base: Path
    db: MariaDB
    sshd: SSHD
    database: str
    site: Path
    password_file: Path
    password: str

    def job(self, **overrides: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "type": "wordpress",
            "schedule": "30 2 * * *",
            "mysql": {
                "host": self.db.host,
                "port": self.db.port,
                "user": "wpbackup",
                "password_file": str(self.password_file),
                "databases": [self.database],
                "via_ssh": True,
            },
            "files": {"source": str(self.site), "exclude": ["wp-content/cache/"]},
            "ssh": self.sshd.ssh_config(),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(job.get(key), dict):
                job[key] = {**job[key], **value}
            else:
                job[key] = value
        return job

    def config(self, name: str = "cfg", **overrides: Any) -> Path:
        return write_config(self.base / name, {"wordpress": self.job(**overrides)})


@pytest.fixture(scope="module")
def site(mariadb: MariaDB, sshd: SSHD, tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("wp")
    database = f"wp_{secrets.token_hex(4)}"
    password = "p#ss'w\"rd " + secrets.token_hex(6)
    seed_wordpress(mariadb, database, posts=300, user="wpbackup", password=password)
    pw = write_secret(base / "db.password", password)
    tree = make_site(base / "www", uploads=12)
    return Site(base, mariadb, sshd, database, tree, pw, password)


def backupd(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def listed(config: Path) -> list[dict[str, Any]]:
    out = backupd(config, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def store_entries(config: Path) -> list[str]:
    root = config.parent / "store" / "wordpress"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def row_counts(db: MariaDB, database: str) -> dict[str, int]:
    return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}", database=database)[0][0]) for t in TABLES}


def test_wordpress_backup_commits_verified_artifacts(site: Site, mariadb: MariaDB) -> None:
    cfg = site.config("ok")
    run = backupd(cfg, "run", "wordpress")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[-1]["event"] == "committed" and events[-1]["outcome"] == "ok"
    assert all({"ts", "event", "job", "backup_id"} <= e.keys() for e in events)

    rows = listed(cfg)
    assert len(rows) == 1 and rows[0]["verified"]
    bdir = Path(rows[0]["path"])
    manifest = json.loads((bdir / "manifest.json").read_text())
    files = {a["name"]: a for a in manifest["artifacts"]}
    assert set(files) == {site.database, "files"}

    # rows counted from the dump stream equal the database's own counts
    sql = files[site.database]
    assert sql["file"] == f"{site.database}.sql.zst"
    assert sql["stats"]["tables"] == row_counts(mariadb, site.database)
    assert "wp_published" in sql["stats"]["views"]
    assert sql["stats"]["triggers"] == ["wp_users_audit"]

    # the tar holds the site minus the excluded cache, including the symlink
    tar = files["files"]
    expected = [p for p in site.site.rglob("*") if p.is_file() and not p.is_symlink() and "cache" not in p.parts]
    assert tar["stats"]["files"] == len(expected)
    assert tar["stats"]["bytes"] == sum(p.stat().st_size for p in expected)
    assert tar["stats"]["symlinks"] == 1

    # permissions: 0700 directories, 0600 files
    assert stat.S_IMODE(bdir.stat().st_mode) == 0o700
    assert stat.S_IMODE(bdir.parent.stat().st_mode) == 0o700
    for f in bdir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f

    # the dump restores under another name into a second server
    other = MariaDB().start()
    try:
        other.execute("CREATE DATABASE restored")
        dump = zstandard.ZstdDecompressor().decompress((bdir / sql["file"]).read_bytes(), max_output_size=1 << 30)
        subprocess.run(
            ["mariadb", f"--defaults-extra-file={other.option_file}", "restored"],
            input=dump,
            check=True,
            capture_output=True,
        )
        assert row_counts(other, "restored") == row_counts(mariadb, site.database)
    finally:
        other.stop()

    # inspect reads both artifacts through the compression
    for a in files.values():
        out = backupd(cfg, "inspect", str(bdir / a["file"]))
        assert out.returncode == 0, out.stderr
        assert "OK" in out.stdout


def test_verify_finds_one_flipped_byte_in_either_artifact(site: Site) -> None:
    cfg = site.config("flip")
    assert backupd(cfg, "run", "wordpress").returncode == 0
    bdir = Path(listed(cfg)[0]["path"])
    assert backupd(cfg, "verify").returncode == 0
    for name in (f"{site.database}.sql.zst", "files.tar.zst"):
        path = bdir / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            out = backupd(cfg, "verify", "--json")
            assert out.returncode == 1
            report = json.loads(out.stdout)
            bad = [a for a in report[0]["artifacts"] if not a["ok"]]
            assert [a["artifact"] for a in bad] == [name]
            assert any("sha256" in p for p in bad[0]["problems"])
            assert name in out.stderr and len(out.stderr.strip().splitlines()) == 1
        finally:
            path.write_bytes(original)
    assert backupd(cfg, "verify").returncode == 0


def assert_clean_failure(cfg: Path, out: subprocess.CompletedProcess[str], before: list[str], *needles: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert lines[0].startswith("backupd: job wordpress")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert store_entries(cfg) == before, "a failed run must leave the store as it was"


def test_wrong_password_fails_cleanly(site: Site) -> None:
    cfg = site.config("badpw")
    assert backupd(cfg, "run", "wordpress").returncode == 0
    before = store_entries(cfg)
    write_secret(site.base / "wrong.password", "not-the-password")
    cfg = site.config("badpw", mysql={"password_file": str(site.base / "wrong.password")})
    out = backupd(cfg, "run", "wordpress")
    assert_clean_failure(cfg, out, before, "step dump", "Access denied", str(site.sshd.port))
    # the failure is in the catalog, with its error
    status = subprocess.run(
        ["sqlite3", str(cfg.parent / "state" / "catalog.sqlite"), "SELECT outcome, error FROM runs ORDER BY id"],
        capture_output=True,
        text=True,
        check=False,
    )
    if status.returncode == 0:
        assert "failed|" in status.stdout


def test_unreachable_database_names_host_and_step(site: Site) -> None:
    from backupd.scratch.base import free_port

    port = free_port()
    cfg = site.config("unreach", mysql={"port": port, "via_ssh": False})
    out = backupd(cfg, "run", "wordpress")
    assert_clean_failure(cfg, out, [], f"127.0.0.1:{port}", "step dump")


def test_ssh_key_refused(site: Site, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = site.config("badkey", ssh={**site.sshd.ssh_config(), "key_file": str(key)})
    out = backupd(cfg, "run", "wordpress")
    assert_clean_failure(cfg, out, [], "step ssh connect", "key refused", str(site.sshd.port))


def test_ssh_unreachable(site: Site) -> None:
    from backupd.scratch.base import free_port

    port = free_port()
    cfg = site.config("nossh", ssh={**site.sshd.ssh_config(), "port": port})
    out = backupd(cfg, "run", "wordpress")
    assert_clean_failure(cfg, out, [], "step ssh connect", "refused", f"127.0.0.1:{port}")


def fake_dump(tmp_path: Path, body: str) -> dict[str, str]:
    """A `mariadb-dump` first on PATH that wraps the real one (for faults the real tool will not make)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "mariadb-dump"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_dump_killed_half_way(site: Site, tmp_path: Path) -> None:
    cfg = site.config("killed", mysql={"via_ssh": False})
    assert backupd(cfg, "run", "wordpress").returncode == 0
    before = store_entries(cfg)
    env = fake_dump(tmp_path, '/usr/bin/mariadb-dump "$@" | head -c 20000\nkill -KILL $$\n')
    out = backupd(cfg, "run", "wordpress", env=env)
    assert_clean_failure(cfg, out, before, "step dump", "killed by SIGKILL")


def test_truncated_dump_without_error_is_caught_by_the_trailer_check(site: Site, tmp_path: Path) -> None:
    cfg = site.config("trunc", mysql={"via_ssh": False})
    env = fake_dump(tmp_path, '/usr/bin/mariadb-dump "$@" | head -c 20000\nexit 0\n')
    out = backupd(cfg, "run", "wordpress", env=env)
    assert_clean_failure(cfg, out, [], "step verify", "Dump completed")


def slow_env(tmp_path: Path) -> dict[str, str]:
    return fake_dump(tmp_path, 'sleep 3\nexec /usr/bin/mariadb-dump "$@"\n')


def test_second_run_exits_75_and_touches_nothing(site: Site, tmp_path: Path) -> None:
    cfg = site.config("lock", mysql={"via_ssh": False})
    env = {**os.environ, **slow_env(tmp_path)}
    first = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "run", "wordpress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_for(lambda: any(e.startswith(".partial-") for e in store_entries(cfg)))
    during = store_entries(cfg)
    second = backupd(cfg, "run", "wordpress")
    assert second.returncode == 75, second.stderr
    assert "already running" in second.stderr
    assert store_entries(cfg) == during
    assert first.wait(60) == 0
    assert len(listed(cfg)) == 1


def test_lock_held_by_another_process(site: Site) -> None:
    cfg = site.config("lock2")
    lock_dir = cfg.parent / "state" / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "wordpress.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = backupd(cfg, "run", "wordpress")
        assert out.returncode == 75
        assert store_entries(cfg) == []
    finally:
        os.close(fd)


def test_kill_9_mid_dump_leaves_nothing_listed_and_next_run_succeeds(site: Site, tmp_path: Path) -> None:
    cfg = site.config("kill9", mysql={"via_ssh": False})
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "run", "wordpress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **slow_env(tmp_path)},
    )
    wait_for(lambda: any(e.startswith(".partial-") for e in store_entries(cfg)))
    proc.kill()
    proc.wait()
    assert listed(cfg) == []
    run = backupd(cfg, "run", "wordpress")
    assert run.returncode == 0, run.stderr
    assert [e for e in store_entries(cfg) if e.startswith(".partial")] == []
    assert len(listed(cfg)) == 1


def test_sigterm_mid_dump_commits_nothing(site: Site, tmp_path: Path) -> None:
    cfg = site.config("term", mysql={"via_ssh": False})
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "run", "wordpress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **slow_env(tmp_path)},
    )
    wait_for(lambda: any(e.startswith(".partial-") for e in store_entries(cfg)))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in err and "Traceback" not in err
    assert store_entries(cfg) == []


def test_no_password_in_any_argv_or_log(site: Site, tmp_path: Path) -> None:
    for via_ssh in (True, False):
        cfg = site.config(f"argv{via_ssh}", mysql={"via_ssh": via_ssh})
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupd", "--config", str(cfg), "run", "wordpress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **slow_env(tmp_path)},
        )
        seen_dump = False
        needle = site.password.encode()
        while proc.poll() is None:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                assert needle not in cmdline, cmdline
                seen_dump |= b"mariadb-dump" in cmdline and b"--defaults-extra-file" in cmdline
            time.sleep(0.02)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert seen_dump, "the scan never saw the dump running"
        assert needle not in out and needle not in err
        state = cfg.parent / "state"
        for f in state.rglob("*"):
            if f.is_file():
                assert needle not in f.read_bytes(), f


def test_config_typo_names_file_and_key(site: Site) -> None:
    cfg = site.config("typo")
    job = cfg.parent / "jobs" / "wordpress.toml"
    job.write_text(job.read_text().replace("schedule =", "schedul ="))
    out = backupd(cfg, "run", "wordpress")
    assert out.returncode == 2
    assert out.stderr.strip() == f"backupd: config {job}: schedul: unknown key (and 1 more problem)" or (
        str(job) in out.stderr and "schedul" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_unknown_job_is_a_usage_error(site: Site) -> None:
    cfg = site.config("unknown")
    out = backupd(cfg, "run", "nosuchjob")
    assert out.returncode == 2
    assert "unknown job 'nosuchjob'" in out.stderr and "wordpress" in out.stderr


def test_catalog_rebuild_from_manifests(site: Site) -> None:
    cfg = site.config("rebuild")
    assert backupd(cfg, "run", "wordpress").returncode == 0
    (cfg.parent / "state" / "catalog.sqlite").unlink()
    for side in ("-wal", "-shm"):
        Path(str(cfg.parent / "state" / "catalog.sqlite") + side).unlink(missing_ok=True)
    out = backupd(cfg, "catalog", "rebuild")
    assert out.returncode == 0, out.stderr
    assert "1 backup" in out.stdout
    rows = listed(cfg)
    assert len(rows) == 1 and rows[0]["verified"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_the_write(site: Site, mariadb: MariaDB, tiny_disk: Path) -> None:
    database = f"full_{secrets.token_hex(3)}"
    mariadb.execute(f"CREATE DATABASE {database}; CREATE TABLE {database}.b (id int PRIMARY KEY, v blob)")
    mariadb.execute(f"INSERT INTO {database}.b VALUES (1, RANDOM_BYTES(1024))")
    job = {
        "type": "mysql",
        "schedule": "@daily",
        "host": mariadb.host,
        "port": mariadb.port,
        "user": "wpbackup",
        "password_file": str(site.password_file),
        "databases": [database],
    }
    cfg = write_config(site.base / "full", {"wordpress": job}, settings={"storage": {"root": str(tiny_disk)}})
    first = backupd(cfg, "run", "wordpress")
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in (tiny_disk / "wordpress").iterdir())
    # incompressible rows: the next dump (~0.8 MB of random hex, ~0.4 MB compressed) cannot fit in 256 KiB
    mariadb.execute("INSERT INTO b SELECT seq, RANDOM_BYTES(1024) FROM seq_2_to_400", database=database)
    out = backupd(cfg, "run", "wordpress")
    assert out.returncode == 1
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "No space left on device" in line and "job wordpress" in line, line
    assert sorted(p.name for p in (tiny_disk / "wordpress").iterdir()) == before
    assert backupd(cfg, "verify").returncode == 0


def test_check_config_connect_reaches_the_database_through_the_ssh_host(site: Site, tmp_path: Path) -> None:
    """A via_ssh job's database is checked from the SSH host, as the dump reaches it; a wrong password is
    one line naming the host and the step, and the other jobs are still checked."""
    ok = backupd(site.config("reach"), "check-config", "--connect")
    assert ok.returncode == 0, ok.stderr
    assert "via ssh) server" in ok.stdout and "ssh " in ok.stdout
    bad_pw = write_secret(tmp_path / "wrong.password", "not the password")
    cfg = write_config(
        site.base / "reach-bad",
        {"good": site.job(), "bad": site.job(mysql={"password_file": str(bad_pw)})},
    )
    out = backupd(cfg, "check-config", "--connect")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = [x for x in out.stderr.splitlines() if x.startswith("backupd:")]
    assert "step connect" in line and "via ssh" in line and "Access denied" in line
    assert "good: reachable" in out.stdout
