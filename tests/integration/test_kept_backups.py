"""Every kept backup stays proven: the scheduled re-verification finds a flipped byte in an old backup and an
object altered in the bucket, retention then keeps an extra older good one, `repair` restores the bad copy
from its good twin, both copies bad is kept and reported, an interrupted verification resumes, a running job
is left alone, rotating drills reach every kept backup, and the daemon runs the verification on its own."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.store.locks import job_lock
from tests.conftest import run_cli, wait_for
from tests.integration.test_daemon import DaemonProc


def site(
    tmp_path: Path, n: int, s3: MotoS3 | None = None, size: int = 20_000, **extra: Any
) -> tuple[str, list[str], str | None]:
    """A files job with `n` committed backups (each of a changed tree); (config, backup ids, bucket)."""
    src = tmp_path / "src"
    src.mkdir()
    settings: dict[str, Any] = {}
    bucket = None
    if s3 is not None:
        bucket = f"bk-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(bucket)
        settings["s3"] = {"enabled": True, "bucket": bucket, "prefix": "b/", "endpoint_url": s3.endpoint_url,
                          "region": "us-east-1", "verify_read_fraction": 1.0}
    job = {"type": "files", "source": f"{src}/", "schedule": "@yearly", **extra}
    cfg = str(write_config(tmp_path / "etc", {"site": job}, settings=settings))
    for i in range(n):
        (src / f"page{i}.bin").write_bytes(os.urandom(size))
        rc, _, err = run_cli_plain(cfg, "run", "site")
        assert rc == 0, err
    ids = sorted(p.name for p in (tmp_path / "etc" / "store" / "site").iterdir() if not p.name.startswith("."))
    # runs faster than a second each get IDs a second apart, so the newest can be dated a moment after now,
    # which retention rightly does not count: wait until it is not
    newest = datetime.strptime(ids[-1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    while time.time() < newest + 1:
        time.sleep(0.05)
    return cfg, ids, bucket


def run_cli_plain(cfg: str, *args: str) -> tuple[int, str, str]:
    out = subprocess.run([sys.executable, "-m", "backupd", "--config", cfg, *args], capture_output=True, text=True,
                         timeout=120, check=False)
    return out.returncode, out.stdout, out.stderr


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def artifact(cfg: str, backup_id: str) -> Path:
    return next((Path(cfg).parent / "store" / "site" / backup_id).glob("files.tar*"))


def verifications(cfg: str) -> list[tuple[str, str, int]]:
    db = sqlite3.connect(Path(cfg).parent / "state" / "catalog.sqlite")
    try:
        return [tuple(r) for r in db.execute("SELECT backup_id, copy, ok FROM verifications ORDER BY id")]
    finally:
        db.close()


def test_bad_monthly_found_retention_keeps_an_extra_good_one(tmp_path: Path) -> None:
    cfg, (a, b, c), _ = site(tmp_path, 3)
    write_config(tmp_path / "etc", {"site": {"type": "files", "source": f"{tmp_path}/src/", "schedule": "@yearly"}},
                 retention={"default": {"keep_last": 2}})
    rc, out, _ = run_cli_plain(cfg, "prune", "--dry-run", "--json")
    assert {d["backup_id"]: d["action"] for d in json.loads(out)}[a] == "delete"
    flip(artifact(cfg, b))  # bit rot in a kept backup
    rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")
    assert rc == 1 and f"site/{b}: BAD" in out and "sha256 mismatch" in out, out + err
    assert [v[0] for v in verifications(cfg)][:3] == [a, b, c], "least recently verified first"
    rc, out, _ = run_cli_plain(cfg, "prune", "--dry-run", "--json")
    actions = {d["backup_id"]: d["action"] for d in json.loads(out)}
    assert actions == {a: "keep", b: "keep", c: "keep"}, "the bad one no longer counts: an older good one is kept"
    rc, out, _ = run_cli_plain(cfg, "status")
    assert "1 failed verification(s)" in out and "oldest last verified" in out


def test_sampled_read_finds_an_altered_object_and_repair_reuploads_it(tmp_path: Path, s3_env: MotoS3) -> None:
    cfg, (_, b), bucket = site(tmp_path, 2, s3_env)
    assert bucket is not None
    key = f"b/site/{b}/{artifact(cfg, b).name}"
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key=key, Body=b"not the archive")  # altered in the bucket
    rc, out, err = run_cli_plain(cfg, "repair", f"site/{b}")
    assert rc == 0 and "S3 copy re-uploaded from the good local copy and read back: ok" in out, out + err
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == artifact(cfg, b).read_bytes()

    client.put_object(Bucket=bucket, Key=key, Body=b"altered again")
    rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")  # found by the sampled read, copied again
    assert rc == 1 and f"s3 site/{b}: BAD" in out and f"s3 {'site/' + b}: copied, ok" in out, out + err
    verdict = json.loads((Path(cfg).parent / "store" / "site" / b / "verification.json").read_text())
    assert verdict["s3"]["ok"] is False and verdict["s3"]["level"] == "read" and verdict["local"]["ok"] is True
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == artifact(cfg, b).read_bytes()
    rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")
    assert rc == 0, out + err


def test_repair_restores_a_bad_local_copy_from_s3_and_both_bad_is_kept(tmp_path: Path, s3_env: MotoS3) -> None:
    cfg, (a, b), bucket = site(tmp_path, 2, s3_env)
    assert bucket is not None
    good = artifact(cfg, a).read_bytes()
    flip(artifact(cfg, a))
    rc, out, err = run_cli_plain(cfg, "repair", f"site/{a}")
    assert rc == 0 and "restored from s3://" in out and "local copy verified again: ok" in out, out + err
    assert artifact(cfg, a).read_bytes() == good

    flip(artifact(cfg, b))
    s3_env.client().put_object(Bucket=bucket, Key=f"b/site/{b}/{artifact(cfg, b).name}", Body=b"x")
    rc, out, err = run_cli_plain(cfg, "repair", f"site/{b}")
    assert rc == 1 and "both copies are bad; the backup is kept and marked bad" in err
    assert artifact(cfg, b).exists()
    rc, out, _ = run_cli_plain(cfg, "list", "--json")
    assert {r["backup_id"]: r["verified"] for r in json.loads(out)} == {a: True, b: False}


def test_interrupted_verification_resumes_and_a_running_job_is_left_alone(tmp_path: Path) -> None:
    cfg, ids, _ = site(tmp_path, 6, size=8 << 20)  # backups of 8..48 MiB: a SIGTERM lands part-way
    proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", cfg, "verify", "--scheduled"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(verifications(cfg)) >= 1 or proc.poll() is not None, 60, "a first verdict")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    store = Path(cfg).parent / "store" / "site"
    first = [i for i in ids if (store / i / "verification.json").exists()]  # the store holds the verdicts
    assert 1 <= len(first) < len(ids), "the verification was interrupted part-way"
    seen = len(verifications(cfg))
    rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")
    assert rc == 0, out + err
    second = [v[0] for v in verifications(cfg)][seen:]
    assert set(second) == set(ids)
    untouched = [i for i in ids if i not in first]
    assert second[: len(untouched)] == untouched, "the next verification starts with what the last one missed"

    with job_lock(Path(cfg).parent / "state", "site"):  # a run of the job is going
        rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")
    assert rc == 0 and out.count("skipped (the job is running") == len(ids), out + err


def test_rotating_drills_reach_every_kept_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, (a, b, c), _ = site(tmp_path, 3)
    drilled = []
    for _ in range(5):
        rc, out, err = run_cli(capsys, "--config", cfg, "drill", "site", "--json")
        assert rc == 0, err
        drilled.append(json.loads(out)[0]["backup_id"])
    assert drilled == [c, a, c, b, c], "newest, then the kept backup drilled least recently, never drilled first"
    rc, out, err = run_cli(capsys, "--config", cfg, "drill", "site", "--backup", a, "--json")
    assert rc == 0 and json.loads(out)[0]["backup_id"] == a, err


def test_bad_verify_schedule_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "etc", {}, settings={"scheduler": {"verify_schedule": "every sunday"}})
    rc, _, err = run_cli(capsys, "--config", str(cfg), "check-config")
    assert rc == 2 and "scheduler.verify_schedule" in err and "Traceback" not in err


def test_the_daemon_reverifies_on_its_schedule(tmp_path: Path) -> None:
    """The daemon runs the re-verification by itself, at low priority, and it never takes a backup's slot: with
    max_concurrent_jobs = 1 another job's backup due at the same minute still starts on time."""
    cfg, (a,), _ = site(tmp_path, 1, size=384 << 20)  # a verification that lasts a few seconds
    flip(artifact(cfg, a))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x\n")
    write_config(tmp_path / "etc", {
        "site": {"type": "files", "source": f"{tmp_path}/src/", "schedule": "@yearly"},
        "zulu": {"type": "files", "source": f"{other}/", "schedule": "* * * * *"},  # queued after site
    }, settings={"http": {"listen": "127.0.0.1:0"},
                 "scheduler": {"verify_schedule": "* * * * *", "max_concurrent_jobs": 1}})
    d = DaemonProc(Path(cfg))
    try:
        d.wait_event("spawned", timeout=75, job="site", kind="verify")
        spawned = d.wait_event("spawned", timeout=30, job="zulu", kind="backup", trigger="schedule")
        verified = d.wait_event("exited", timeout=120, job="site", kind="verify")
    finally:
        d.stop()
    assert spawned["lag"] < 2, spawned
    assert spawned["ts"] < verified["ts"], "the backup started while the verification was still running"
    assert (a, "local", 0) in verifications(cfg)


def test_a_failed_reverification_is_notified_and_listed(tmp_path: Path) -> None:
    """The scheduled verification's finding reaches a person (webhook), once per state change, and `list`
    shows each backup's last check."""
    from tests.notify.conftest import start_receiver, stop_receiver

    rec = start_receiver()
    try:
        cfg, (a, _), _ = site(tmp_path, 2)
        write_config(tmp_path / "etc", {"site": {"type": "files", "source": f"{tmp_path}/src/", "schedule": "@yearly"}},
                     settings={"notify": {"timeout": 2, "attempts": 2, "webhook_urls": [rec.url()]}})
        flip(artifact(cfg, a))
        rc, _, _ = run_cli_plain(cfg, "verify", "--scheduled")
        assert rc == 1
        rc, _, _ = run_cli_plain(cfg, "verify", "--scheduled")  # still bad: not sent again within `repeat`
        assert rec.events() == ["verify_failure"]
        sent = rec.requests[0].json()
        assert sent["job"] == "site" and sent["backup_id"] == a and "sha256 mismatch" in sent["error"]
        rc, out, _ = run_cli_plain(cfg, "list")
        assert "LAST CHECKED" in out and "local BAD" in out and "local ok" in out
    finally:
        stop_receiver(rec)


def test_scheduled_verification_of_a_wordpress_job(tmp_path: Path, mariadb: Any, sshd: Any) -> None:
    """The same over real servers: a WordPress job (MariaDB dumped through the SSH host, files over rsync)
    whose older backup rots in the database artifact is found by the scheduled verification."""
    import secrets as secrets_mod

    from backupd.lab.content import make_site, seed_wordpress, write_secret

    database = f"wpv_{secrets_mod.token_hex(4)}"
    password = secrets_mod.token_hex(12)
    seed_wordpress(mariadb, database, posts=50, user="wpverify", password=password)
    site_dir = make_site(tmp_path / "www", uploads=3)
    job = {
        "type": "wordpress", "schedule": "@yearly",
        "mysql": {"host": mariadb.host, "port": mariadb.port, "user": "wpverify",
                  "password_file": str(write_secret(tmp_path / "pw", password)), "databases": [database],
                  "via_ssh": True},
        "files": {"source": str(site_dir)},
        "ssh": sshd.ssh_config(),
    }  # fmt: skip
    cfg = str(write_config(tmp_path / "etc", {"wp": job}))
    for _ in range(2):
        rc, _, err = run_cli_plain(cfg, "run", "wp")
        assert rc == 0, err
    older, newer = sorted(p.name for p in (tmp_path / "etc" / "store" / "wp").iterdir() if not p.name.startswith("."))
    flip(next((tmp_path / "etc" / "store" / "wp" / older).glob(f"{database}.sql*")))
    rc, out, err = run_cli_plain(cfg, "verify", "--scheduled")
    assert rc == 1 and f"wp/{older}: BAD" in out and f"wp/{newer}: ok" in out, out + err
    rc, out, _ = run_cli_plain(cfg, "list", "--json")
    assert {r["backup_id"]: r["verified"] for r in json.loads(out)} == {older: False, newer: True}
