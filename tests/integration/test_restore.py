"""`backupd restore` end to end: a real MariaDB as source, a second one as target (so "restored into the
wrong place" fails), a real sshd for the WordPress files, the real CLI in a subprocess."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backupd.lab.content import make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB

TABLES = ["wp_audit", "wp_blobs", "wp_empty", "wp_options", "wp_postmeta", "wp_posts", "wp_users"]


def backupd(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def row_counts(db: MariaDB, database: str) -> dict[str, int]:
    return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}", database=database)[0][0]) for t in TABLES}


def databases(db: MariaDB) -> set[str]:
    return {r[0] for r in db.execute("SHOW DATABASES")}


@dataclass
class Source:
    base: Path
    db: MariaDB
    sshd: SSHD
    database: str
    site: Path
    password_file: Path

    def mysql_part(self) -> dict[str, Any]:
        return {
            "host": self.db.host,
            "port": self.db.port,
            "user": "rstbackup",
            "password_file": str(self.password_file),
            "databases": [self.database],
        }

    def config(self, name: str, kind: str = "mysql") -> Path:
        if kind == "mysql":
            job: dict[str, Any] = {"type": "mysql", "schedule": "@daily", **self.mysql_part()}
        else:
            job = {
                "type": "wordpress",
                "schedule": "@daily",
                "mysql": {**self.mysql_part(), "via_ssh": True},
                "files": {"source": str(self.site), "exclude": ["wp-content/cache/"]},
                "ssh": self.sshd.ssh_config(),
            }
        cfg = write_config(self.base / name, {kind: job})
        out = backupd(cfg, "run", kind)
        assert out.returncode == 0, out.stderr
        return cfg


@pytest.fixture(scope="module")
def source(mariadb: MariaDB, sshd: SSHD, tmp_path_factory: pytest.TempPathFactory) -> Source:
    base = tmp_path_factory.mktemp("restore")
    database = f"wpr_{secrets.token_hex(4)}"
    password = "r#st'o\"re " + secrets.token_hex(6)
    seed_wordpress(mariadb, database, posts=300, user="rstbackup", password=password)
    pw = write_secret(base / "db.password", password)
    return Source(base, mariadb, sshd, database, make_site(base / "www", uploads=8), pw)


@pytest.fixture
def target(mariadb_factory: Callable[..., MariaDB], tmp_path: Path) -> tuple[MariaDB, dict[str, str]]:
    """A second server, and the environment that hands `backupd restore` its root password file."""
    db = mariadb_factory()
    pw = write_secret(tmp_path / "target.password", db.root_password)
    return db, {"BACKUPD_RESTORE_PASSWORD_FILE": str(pw)}


def uri(db: MariaDB, database: str = "") -> str:
    return f"mysql://root@{db.host}:{db.port}/{database}"


def newest(cfg: Path, job: str) -> Path:
    rows = json.loads(backupd(cfg, "list", job, "--json").stdout)
    return Path(rows[-1]["path"])


def test_mysql_restore_into_second_server(source: Source, target: tuple[MariaDB, dict[str, str]]) -> None:
    cfg = source.config("my")
    db, env = target
    before = databases(source.db)
    out = backupd(cfg, "restore", "mysql", "--to", uri(db, "restored"), env=env)
    assert out.returncode == 0, out.stderr
    assert row_counts(db, "restored") == row_counts(source.db, source.database)
    assert "rows" in out.stdout and "restored mysql/" in out.stdout
    routines = db.execute("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='restored'")
    assert routines == [("wp_count_posts",)]
    assert databases(source.db) == before, "nothing may land on the source server"
    assert db.root_password not in out.stdout + out.stderr

    # a URI without a database restores each dump under its own name
    out = backupd(cfg, "restore", "mysql", "--to", uri(db), env=env)
    assert out.returncode == 0, out.stderr
    assert row_counts(db, source.database) == row_counts(source.db, source.database)


def test_restore_into_non_empty_database_needs_yes(source: Source, target: tuple[MariaDB, dict[str, str]]) -> None:
    cfg = source.config("nonempty")
    db, env = target
    db.execute("CREATE DATABASE busy; CREATE TABLE busy.keep (id int); INSERT INTO busy.keep VALUES (1)")
    out = backupd(cfg, "restore", "mysql", "--to", uri(db, "busy"), env=env)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "busy" in lines[0] and f"{db.port}" in lines[0] and "--yes" in lines[0]
    assert [r[0] for r in db.execute("SHOW TABLES", database="busy")] == ["keep"]
    out = backupd(cfg, "restore", "mysql", "--to", uri(db, "busy"), "--yes", env=env)
    assert out.returncode == 0, out.stderr
    assert row_counts(db, "busy") == row_counts(source.db, source.database)


def test_altered_archive_is_refused_before_writing(source: Source, target: tuple[MariaDB, dict[str, str]]) -> None:
    cfg = source.config("altered")
    db, env = target
    art = next(newest(cfg, "mysql").glob("*.sql.zst"))
    original = art.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x40
    art.write_bytes(bytes(data))
    try:
        out = backupd(cfg, "restore", "mysql", "--to", uri(db, "never"), env=env)
        assert out.returncode == 1
        assert "sha256" in out.stderr and "Traceback" not in out.stderr
        assert "never" not in databases(db), "a refused restore must not even create the database"
    finally:
        art.write_bytes(original)


def test_bad_target_uri_and_missing_password_are_one_line(source: Source, tmp_path: Path) -> None:
    cfg = source.config("baduri")
    out = backupd(cfg, "restore", "mysql", "--to", "mysql://root:secret@127.0.0.1:1/x")
    assert out.returncode == 2 and "password" in out.stderr and "secret" not in out.stderr
    out = backupd(cfg, "restore", "mysql", "--to", "/tmp/x")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    out = backupd(cfg, "restore", "mysql", "--to", uri(source.db, "x"), "--password-file", str(tmp_path / "none"))
    assert out.returncode == 2 and "none" in out.stderr


# ------------------------------------------------------------------ files / tar safety


def evil_tar(outside: Path) -> bytes:
    """A tar with a normal file, then '../' and absolute-path members, and outward symlinks (which are data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:

        def add(name: str, data: bytes = b"x", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in kw.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)

        add("./ok.txt", b"fine")
        add("../escaped.txt")
        add(str(outside / "absolute.txt"))
        add("./link", type=tarfile.SYMTYPE, linkname="../../../etc")
        add("./link2", type=tarfile.SYMTYPE, linkname=str(outside))
    return buf.getvalue()


def fake_files_backup(base: Path, raw: bytes) -> Path:
    """A committed-looking backup of a files job: the tar as zstd, a manifest with the right sha256."""
    import hashlib

    from backupd.formats.registry import checker_for

    cfg = write_config(base, {"site": {"type": "files", "schedule": "@daily", "source": "/nonexistent"}})
    bdir = base / "store" / "site" / "20250101T000000Z"
    bdir.mkdir(parents=True)
    blob = zstandard.ZstdCompressor().compress(raw)
    (bdir / "files.tar.zst").write_bytes(blob)
    checker = checker_for("tar")
    checker.feed(raw)
    result = checker.finish()
    art = {
        "name": "files",
        "file": "files.tar.zst",
        "format": "tar",
        "compression": "zstd",
        "bytes": len(blob),
        "raw_bytes": len(raw),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "stats": json.loads(json.dumps(result.stats, default=str)),
        "facts": {},
        "verification": {"ok": True},
    }
    manifest = {"job": "site", "type": "files", "verified": True, "artifacts": [art]}
    (bdir / "manifest.json").write_text(json.dumps(manifest))
    return cfg


def test_unsafe_tar_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cfg = fake_files_backup(tmp_path / "cfg", evil_tar(outside))
    dest = tmp_path / "deep" / "a" / "b" / "restore"
    out = backupd(cfg, "restore", "site", "--to", str(dest))
    assert out.returncode == 1, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not dest.exists() or not any(dest.iterdir()), "nothing may be extracted, not even the safe member"
    assert list(outside.iterdir()) == []
    assert not (dest.parent / "escaped.txt").exists()


def test_extract_refuses_unsafe_listing_without_writing(tmp_path: Path) -> None:
    """The restore's own pre-scan, independent of what the format checker thinks of the listing."""
    from backupd.errors import StepError
    from backupd.sources.files.extract import extract_tar

    outside = tmp_path / "outside"
    outside.mkdir()
    tar = tmp_path / "evil.tar"
    tar.write_bytes(evil_tar(outside))
    dest = tmp_path / "dest"
    with pytest.raises(StepError) as err:
        extract_tar(tar, dest, yes=False)
    assert "unsafe member" in str(err.value) and "and 1 more" in str(err.value)
    assert not dest.exists() and list(outside.iterdir()) == []


def tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


def test_wordpress_restore_database_and_files(
    source: Source, target: tuple[MariaDB, dict[str, str]], tmp_path: Path
) -> None:
    cfg = source.config("wp", kind="wordpress")
    db, env = target
    dest = tmp_path / "site"
    out = backupd(cfg, "restore", "wordpress", "--to", uri(db, "wp_restored"), "--files-to", str(dest), env=env)
    assert out.returncode == 0, out.stderr
    assert row_counts(db, "wp_restored") == row_counts(source.db, source.database)
    expected = {k: v for k, v in tree(source.site).items() if not k.startswith("wp-content/cache")}
    assert tree(dest) == expected
    # the files target is now non-empty: a second restore without --yes is refused, naming it
    out = backupd(cfg, "restore", "wordpress", "--to", uri(db, "wp_other"), "--files-to", str(dest), env=env)
    assert out.returncode == 1 and str(dest) in out.stderr
    assert "wp_other" not in databases(db)


def test_mongodb_options_on_another_job_type_are_a_usage_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "etc", {"site": {"type": "files", "source": str(tmp_path), "schedule": "@daily"}})
    argv = [sys.executable, "-m", "backupd", "--config", str(cfg), "restore", "site", "--to", str(tmp_path / "t")]
    out = subprocess.run([*argv, "--oplog-replay"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "are for mongodb jobs" in out.stderr and "Traceback" not in out.stderr
