"""Encrypted backups end to end, with real keys from age-keygen and the real `age` binary: a files job
(fast, local) for the verify / restore / drill / rotation cases, and a WordPress job (MariaDB over SSH plus
its files) restored with the identity."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backupd.engine.crypto import fingerprint
from backupd.lab.content import write_config
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="the age binary is not installed")
MARKER = b"PLAINTEXT-MARKER-7f3a9c"


def keygen(path: Path) -> str:
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return out.stderr.strip().split(": ", 1)[1]


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.key, self.recipient = tmp_path / "id.key", keygen(tmp_path / "id.key")
        self.wrong, _ = tmp_path / "wrong.key", keygen(tmp_path / "wrong.key")
        self.src = tmp_path / "src"
        (self.src / "sub").mkdir(parents=True)
        (self.src / "a.txt").write_bytes(MARKER + b"\n" * 100)
        (self.src / "sub" / "b.bin").write_bytes(os.urandom(200_000) + MARKER)
        self.cfg = self.config([self.recipient])

    def config(self, recipients: list[str], **extra: Any) -> Path:
        job = {"type": "files", "source": f"{self.src}/", "schedule": "@daily", **extra}
        return write_config(self.base / "etc", {"site": job}, settings={"encryption": {"age_recipients": recipients}})

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        return run_cli(capsys, "--config", str(self.cfg), *argv)

    def backups(self, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
        rc, out, _ = self.cli(capsys, "list", "site", "--json")
        assert rc == 0
        rows: list[dict[str, Any]] = json.loads(out)
        return rows


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.delenv("BACKUPD_AGE_IDENTITY_FILE", raising=False)
    e = Env(tmp_path)
    rc, _, err = e.cli(capsys, "run", "site")
    assert rc == 0, err
    return e


def artifact(row: dict[str, Any]) -> Path:
    [art] = Path(row["path"]).glob("*.age")
    return art


def test_stored_backup_is_ciphertext_that_age_opens(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [row] = env.backups(capsys)
    art = artifact(row)
    assert art.name == "files.tar.zst.age"
    assert row["encrypted"] is True and row["recipients"] == [fingerprint(env.recipient)]
    age = subprocess.Popen(["age", "-d", "-i", str(env.key), str(art)], stdout=subprocess.PIPE)
    listing = subprocess.run(["tar", "-t", "--zstd", "-f", "-"], stdin=age.stdout, capture_output=True, check=True)
    assert age.wait() == 0 and "./sub/b.bin" in listing.stdout.decode()
    # no stored artifact, manifest or leftover temp file holds the plaintext (the staging mirror of a files
    # job is plaintext by design: docs/security.md)
    for where in (env.base / "etc" / "store", env.base / "etc" / "state"):
        for f in where.rglob("*"):
            if f.is_file() and "staging" not in f.parts:
                assert MARKER not in f.read_bytes(), f
    manifest = json.loads((Path(row["path"]) / "manifest.json").read_text())
    assert env.recipient not in json.dumps(manifest) and manifest["artifacts"][0]["stats"]["files"] == 2


def plaintext_holders(base: Path) -> list[Path]:
    """Every file under the store and the state dir (staging mirrors, tmp, drills) holding the marker."""
    where = (base / "etc" / "store", base / "etc" / "state")
    return sorted(f for w in where for f in w.rglob("*") if f.is_file() and MARKER in f.read_bytes())


def test_keep_staging_false_leaves_no_plaintext_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUPD_AGE_IDENTITY_FILE", raising=False)
    env = Env(tmp_path)
    staging = tmp_path / "etc" / "state" / "staging" / "site"
    assert env.cli(capsys, "run", "site")[0] == 0
    # the default keeps the mirror for the next run's delta transfer: plaintext, by design
    assert plaintext_holders(tmp_path) == [staging / "files" / "a.txt", staging / "files" / "sub" / "b.bin"]

    env.cfg = env.config([env.recipient], keep_staging=False)
    rc, _, err = env.cli(capsys, "run", "site")
    assert rc == 0, err
    assert not staging.exists() and plaintext_holders(tmp_path) == []
    # a failed run removes it too
    env.src.rename(tmp_path / "gone")
    rc, _, err = env.cli(capsys, "run", "site")
    assert rc == 1 and "rsync" in err
    assert not staging.exists() and plaintext_holders(tmp_path) == []
    (tmp_path / "gone").rename(env.src)
    # and the next run still works (a full transfer): its backup restores
    (env.src / "c.txt").write_bytes(MARKER + b" new")
    rc, _, err = env.cli(capsys, "run", "site")
    assert rc == 0, err
    assert not staging.exists() and plaintext_holders(tmp_path) == []
    newest = env.backups(capsys)[-1]
    dest = tmp_path / "restored"
    rc, _, err = env.cli(capsys, "restore", "site", "--backup", newest["backup_id"], "--to", str(dest),
                         "--identity", str(env.key))
    assert rc == 0, err
    assert (dest / "c.txt").read_bytes() == MARKER + b" new"
    assert (dest / "sub" / "b.bin").read_bytes() == (env.src / "sub" / "b.bin").read_bytes()


def test_keep_staging_is_unknown_to_jobs_without_a_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = {"type": "postgresql", "schedule": "@daily", "host": "127.0.0.1", "user": "u", "keep_staging": False}
    cfg = write_config(tmp_path / "etc", {"pg": job})
    rc, _, err = run_cli(capsys, "--config", str(cfg), "check-config")
    assert rc != 0 and "keep_staging" in err and len(err.strip().splitlines()) == 1, err
    for kind in ({"type": "redis"}, {"type": "files", "source": "/srv/"}):
        cfg = write_config(tmp_path / kind["type"], {"j": {"schedule": "@daily", **kind, "keep_staging": False}})
        rc, _, err = run_cli(capsys, "--config", str(cfg), "check-config")
        assert rc == 0, err


def test_verify_without_the_key_catches_a_flipped_byte_and_truncation(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = env.cli(capsys, "verify", "site")
    assert rc == 0 and "ok (checksum+header)" in out
    rc, out, _ = env.cli(capsys, "verify", "site", "--identity", str(env.key))
    assert rc == 0 and "ok (full)" in out
    rc, out, _ = env.cli(capsys, "show", f"site/{env.backups(capsys)[0]['backup_id']}")
    assert f"recipients {fingerprint(env.recipient)}" in out and "local: ok (full)" in out

    [row] = env.backups(capsys)
    assert row["verification_level"] == "full"
    art = artifact(row)
    good = art.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    art.write_bytes(bytes(flipped))
    rc, out, err = env.cli(capsys, "verify", "site")
    assert rc == 1 and "sha256 mismatch" in err
    art.write_bytes(good[: len(good) - 1000])
    rc, out, err = env.cli(capsys, "verify", "site")
    assert rc == 1 and "size" in err
    art.write_bytes(good)
    assert env.cli(capsys, "verify", "site")[0] == 0


def test_restore_needs_the_right_identity(env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dest = tmp_path / "restored"
    fp = fingerprint(env.recipient)
    rc, _, err = env.cli(capsys, "restore", "site", "--to", str(dest))
    assert rc == 1 and len(err.strip().splitlines()) == 1 and fp in err and "--identity" in err
    assert not dest.exists()
    rc, _, err = env.cli(capsys, "restore", "site", "--to", str(dest), "--identity", str(env.wrong))
    assert rc == 1 and len(err.strip().splitlines()) == 1 and fp in err and "none of them" in err
    assert not dest.exists()
    rc, _, err = env.cli(capsys, "restore", "site", "--to", str(dest), "--identity", str(tmp_path / "missing.key"))
    assert rc == 1 and "missing.key" in err and not dest.exists()
    os.environ["BACKUPD_AGE_IDENTITY_FILE"] = str(env.key)
    try:
        rc, _, err = env.cli(capsys, "restore", "site", "--to", str(dest))
    finally:
        del os.environ["BACKUPD_AGE_IDENTITY_FILE"]
    assert rc == 0, err
    assert (dest / "a.txt").read_bytes() == (env.src / "a.txt").read_bytes()
    assert (dest / "sub" / "b.bin").read_bytes() == (env.src / "sub" / "b.bin").read_bytes()


def _drills(env: Env) -> list[sqlite3.Row]:
    db = sqlite3.connect(env.base / "etc" / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM drills ORDER BY id"))
    finally:
        db.close()


def test_drill_without_identity_fails_and_is_recorded(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = env.cli(capsys, "drill", "site")
    assert rc == 1 and "encrypted for recipients" in err
    [drill] = _drills(env)
    assert drill["outcome"] == "failed" and "encrypted" in drill["error"]
    rc, out, err = env.cli(capsys, "drill", "site", "--identity", str(env.key), "--json")
    assert rc == 0, err
    [report] = json.loads(out)
    assert report["outcome"] == "ok" and any("decryption proven" in n for n in report["notes"])
    assert _drills(env)[-1]["outcome"] == "ok"


def test_rotating_recipients_affects_new_backups_only(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    new_key = env.base / "new.key"
    new_recipient = keygen(new_key)
    env.cfg = env.config([new_recipient, env.recipient])
    rc, _, err = env.cli(capsys, "run", "site")
    assert rc == 0, err
    old, new = env.backups(capsys)
    assert old["recipients"] == [fingerprint(env.recipient)]
    assert new["recipients"] == [fingerprint(new_recipient), fingerprint(env.recipient)]
    # the new key opens the new backup, not the old one; verify with it still proves both (checksum+header)
    rc, _, err = env.cli(capsys, "restore", "site", "--backup", old["backup_id"], "--to", str(env.base / "o"),
                         "--identity", str(new_key))
    assert rc == 1 and "none of them" in err
    rc, _, err = env.cli(capsys, "restore", "site", "--backup", new["backup_id"], "--to", str(env.base / "n"),
                         "--identity", str(new_key))
    assert rc == 0, err
    rc, out, _ = env.cli(capsys, "verify", "site", "--identity", str(new_key))
    assert rc == 0 and "ok (checksum+header)" in out and "ok (full)" in out
    # check-config --connect: an identity that matches no recipient in use is warned of
    env.cfg = env.config([new_recipient])
    rc, _, err = env.cli(capsys, "check-config", "--connect")
    assert rc == 0 and "warning" not in err
    os.environ["BACKUPD_AGE_IDENTITY_FILE"] = str(env.wrong)
    try:
        rc, _, err = env.cli(capsys, "check-config", "--connect")
    finally:
        del os.environ["BACKUPD_AGE_IDENTITY_FILE"]
    assert rc == 0 and "matches none of the job's recipients" in err


def test_inspect_an_encrypted_artifact(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    art = artifact(env.backups(capsys)[0])
    rc, out, _ = env.cli(capsys, "inspect", str(art))
    assert rc == 0 and "age-encrypted, header OK" in out
    rc, out, _ = env.cli(capsys, "inspect", str(art), "--identity", str(env.key))
    assert rc == 0 and "tar, compression zstd, OK" in out


# ------------------------------------------------------------------ SQL: a WordPress job


@pytest.mark.integration
def test_encrypted_wordpress_job_restores_with_the_identity(
    mariadb: Any, sshd: Any, mariadb_factory: Any, tmp_path: Path
) -> None:
    import secrets
    import sys

    from backupd.lab.content import make_site, seed_wordpress, write_secret

    key = tmp_path / "id.key"
    recipient = keygen(key)
    database = f"wpe_{secrets.token_hex(4)}"
    password = "enc " + secrets.token_hex(6)
    seed_wordpress(mariadb, database, posts=50, user="encbackup", password=password)
    pw = write_secret(tmp_path / "db.password", password)
    site = make_site(tmp_path / "www", uploads=3)
    job = {
        "type": "wordpress", "schedule": "@daily",
        "mysql": {"host": mariadb.host, "port": mariadb.port, "user": "encbackup", "password_file": str(pw),
                  "databases": [database], "via_ssh": True},
        "files": {"source": str(site)},
        "ssh": sshd.ssh_config(),
        "encryption": {"age_recipients": [recipient]},
        "keep_staging": False,
    }
    cfg = write_config(tmp_path / "etc", {"wp": job})

    def backupd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backupd", "--config", str(cfg), *args], capture_output=True,
                              text=True, timeout=180, env={**os.environ, **env}, check=False)

    out = backupd("run", "wp")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "etc" / "state" / "staging" / "wp").exists(), "keep_staging = false: no site mirror"
    rows = json.loads(backupd("list", "wp", "--json").stdout)
    stored = sorted(p.name for p in Path(rows[-1]["path"]).iterdir())
    assert all(n.endswith(".zst.age") for n in stored if n != "manifest.json" and n != "verification.json"), stored
    target = mariadb_factory()
    tpw = write_secret(tmp_path / "target.password", target.root_password)
    dest = tmp_path / "site-restored"
    uri = f"mysql://root@{target.host}:{target.port}/wp_restored"
    out = backupd("restore", "wp", "--to", uri, "--files-to", str(dest), BACKUPD_RESTORE_PASSWORD_FILE=str(tpw))
    assert out.returncode == 1 and "encrypted for recipients" in out.stderr and not dest.exists()
    assert "wp_restored" not in {r[0] for r in target.execute("SHOW DATABASES")}
    out = backupd("restore", "wp", "--to", uri, "--files-to", str(dest), "--identity", str(key),
                  BACKUPD_RESTORE_PASSWORD_FILE=str(tpw))
    assert out.returncode == 0, out.stderr
    count = "SELECT COUNT(*) FROM wp_posts"
    assert target.execute(count, database="wp_restored") == mariadb.execute(count, database=database)
    assert (dest / "wp-config.php").read_bytes() == (site / "wp-config.php").read_bytes()
    out = backupd("drill", "wp", "--identity", str(key))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "decryption proven" in out.stdout
