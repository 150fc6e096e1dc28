"""Encrypted backups of Redis, MongoDB and PostgreSQL jobs, end to end against real servers and real keys:
verified with and without the identity, refused with a missing or wrong one before the target is touched,
restored with it (content compared with the source), drilled (the report says decryption was proven), and
one artifact of each opened by the real `age -d | zstd -dc` and read by its real consumer (redis-check-rdb,
pg_restore --list, the mongodump archive reader)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backupd.engine.crypto import fingerprint
from backupd.lab.content import write_config, write_secret
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("zstd") is None, reason="the age and zstd binaries are needed"
)
MARKER = "PLAINTEXT-MARKER-e1c9b44d"


def keygen(path: Path) -> str:
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return out.stderr.strip().split(": ", 1)[1]


class Case:
    """One job with [encryption], its keys (the right one and a wrong one) and its config under `base`."""

    def __init__(self, base: Path, name: str, job: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
        self.base, self.name, self.capsys = base, name, capsys
        self.key, self.wrong = base / "id.key", base / "wrong.key"
        self.recipient = keygen(self.key)
        keygen(self.wrong)
        self.cfg = write_config(base / "etc", {name: {**job, "encryption": {"age_recipients": [self.recipient]}}})

    def cli(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(self.capsys, "--config", str(self.cfg), *argv)

    def run(self) -> dict[str, Any]:
        rc, _, err = self.cli("run", self.name)
        assert rc == 0, err
        rc, out, _ = self.cli("list", self.name, "--json")
        row: dict[str, Any] = json.loads(out)[-1]
        assert row["encrypted"] is True and row["recipients"] == [fingerprint(self.recipient)]
        return row

    def artifacts(self, row: dict[str, Any]) -> list[Path]:
        arts = sorted(p for p in Path(row["path"]).iterdir() if p.name not in ("manifest.json", "verification.json"))
        assert arts and all(p.name.endswith(".zst.age") for p in arts), arts
        return arts

    def verify_both_ways(self) -> None:
        rc, out, err = self.cli("verify", self.name)
        assert rc == 0 and "ok (checksum+header)" in out, out + err
        rc, out, err = self.cli("verify", self.name, "--identity", str(self.key))
        assert rc == 0 and "ok (full)" in out and "checksum+header" not in out, out + err

    def refused(self, *restore_args: str) -> None:
        """A restore without the identity, then with a wrong one: one line naming the recipients, exit 1."""
        fp = fingerprint(self.recipient)
        rc, _, err = self.cli("restore", self.name, *restore_args)
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert f"encrypted for recipients {fp}" in err and "--identity" in err and "Traceback" not in err
        rc, _, err = self.cli("restore", self.name, *restore_args, "--identity", str(self.wrong))
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert fp in err and "none of them" in err

    def restored(self, *restore_args: str) -> str:
        rc, out, err = self.cli("restore", self.name, *restore_args, "--identity", str(self.key))
        assert rc == 0, err
        return out

    def drilled(self) -> dict[str, Any]:
        rc, out, err = self.cli("drill", self.name, "--identity", str(self.key), "--json")
        assert rc == 0, out + err
        [report] = json.loads(out)
        assert report["outcome"] == "ok", report
        assert any("decryption proven" in n and fingerprint(self.recipient) in n for n in report["notes"]), report
        drill: dict[str, Any] = report
        return drill

    def age_plaintext(self, art: Path, out: Path) -> Path:
        """The real tools: `age -d -i KEY FILE | zstd -dc > out`."""
        age = subprocess.Popen(["age", "-d", "-i", str(self.key), str(art)], stdout=subprocess.PIPE)
        with out.open("wb") as fh:
            zstd = subprocess.run(["zstd", "-dc"], stdin=age.stdout, stdout=fh, check=False)
        assert age.stdout is not None
        age.stdout.close()
        assert age.wait() == 0 and zstd.returncode == 0
        return out

    def no_plaintext_left(self, needle: bytes) -> None:
        """No file under the store, state (staging, tmp, drills) dirs holds the source's marker."""
        for where in (self.base / "etc" / "store", self.base / "etc" / "state"):
            for f in where.rglob("*"):
                if f.is_file():
                    assert needle not in f.read_bytes(), f


@pytest.fixture(autouse=True)
def _no_identity_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKUPD_AGE_IDENTITY_FILE", raising=False)


# ------------------------------------------------------------------ Redis


def test_encrypted_redis_backup(redis_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backupd.sources.redis.load import RdbRedis

    server = redis_factory()
    with server.client(decode_responses=True) as c:
        pipe = c.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"str:{i}", f"{MARKER}-{i}")
            pipe.hset(f"hash:{i}", mapping={"n": str(i), "m": MARKER})
        pipe.rpush("list", *[f"item{j}" for j in range(20)])
        pipe.execute()
        source = {k: c.dump(k) for k in c.scan_iter()}
    job = {"type": "redis", "schedule": "@daily", "host": server.host, "port": server.port,
           "require_replica": False, "keep_staging": False}  # fmt: skip
    case = Case(tmp_path, "r", job, capsys)
    row = case.run()
    [art] = case.artifacts(row)
    assert art.name == "dump.rdb.zst.age"
    # keep_staging = false: the plaintext mirror of the RDB is gone, and nothing else holds the plaintext
    assert not (tmp_path / "etc" / "state" / "staging" / "r").exists()
    case.no_plaintext_left(MARKER.encode())
    case.verify_both_ways()

    # a live server cannot load an RDB: the steps say the restore needs the identity and decrypts
    live = f"redis://{server.host}:{server.port}"
    rc, _, err = case.cli("restore", "r", "--to", live)
    assert rc == 1 and "cannot load an RDB" in err and "--identity FILE" in err, err
    assert f"--backup {row['backup_id']}" in err and "never copy it into place" in err

    dest = tmp_path / "restored"
    case.refused("--to", str(dest))
    assert not dest.exists()
    case.restored("--to", str(dest))
    rdb = dest / "dump.rdb"
    assert rdb.read_bytes()[:5] == b"REDIS", "the decrypted RDB, not the ciphertext"
    assert oct(rdb.stat().st_mode & 0o777) == "0o600" and sorted(p.name for p in dest.iterdir()) == ["dump.rdb"]
    check = subprocess.run(["redis-check-rdb", str(rdb)], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and f"{len(source)} keys read" in check.stdout, check.stdout
    with RdbRedis(rdb, base_dir=tmp_path / "loaded") as loaded, loaded.client(decode_responses=True) as c:
        assert {k: c.dump(k) for k in c.scan_iter()} == source

    report = case.drilled()
    [chk] = report["checks"]
    assert chk["expected"] == chk["actual"] == len(source)

    plain = case.age_plaintext(art, tmp_path / "age.rdb")
    check = subprocess.run(["redis-check-rdb", str(plain)], capture_output=True, text=True, check=False)
    assert check.returncode == 0 and f"{len(source)} keys read" in check.stdout, check.stdout

    # the next run still works (a full copy, there is no mirror to delta against)
    case.run()
    assert not (tmp_path / "etc" / "state" / "staging" / "r").exists()
    case.no_plaintext_left(MARKER.encode())


# ------------------------------------------------------------------ MongoDB


def _docs(client: Any) -> dict[str, list[dict[str, Any]]]:
    return {f"{db}.{coll}": sorted(client[db][coll].find({}), key=lambda d: str(d["_id"]))
            for db in ("app", "logs") for coll in client[db].list_collection_names()}  # fmt: skip


def test_encrypted_mongo_backup(mongo_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backupd.formats.mongo_archive import MongoArchiveChecker

    src, dst = mongo_factory(), mongo_factory()
    with src.client() as c:
        c.app.users.insert_many([{"_id": i, "name": f"user {i}", "note": MARKER, "tags": ["a", i]} for i in range(300)])
        c.app.orders.insert_many([{"_id": i, "total": i * 1.5} for i in range(120)])
        c.logs.events.insert_many([{"kind": "click", "at": i} for i in range(50)])
        source = _docs(c)
    counts = {ns: len(docs) for ns, docs in source.items()}
    job = {"type": "mongodb", "schedule": "@daily", "uri": src.uri, "engine": "native", "oplog": False}
    case = Case(tmp_path, "m", job, capsys)
    row = case.run()
    [art] = case.artifacts(row)
    assert art.name == "mongo.archive.zst.age"
    case.no_plaintext_left(MARKER.encode())
    case.verify_both_ways()

    case.refused("--to", dst.uri)
    with dst.client() as c:
        assert not {"app", "logs"} & set(c.list_database_names()), "nothing written before the refusal"
    out = case.restored("--to", dst.uri)
    assert "restored m/" in out
    with dst.client() as c:
        assert _docs(c) == source

    report = case.drilled()
    drilled = {c["check"]: c["actual"] for c in report["checks"]}
    assert all(drilled[f"mongo {ns} documents"] == n for ns, n in counts.items()), drilled

    plain = case.age_plaintext(art, tmp_path / "age.archive").read_bytes()
    checker = MongoArchiveChecker()
    checker.feed(plain)
    result = checker.finish()
    assert result.ok, result.errors
    assert {ns: s["documents"] for ns, s in result.stats["namespaces"].items()} == counts


# ------------------------------------------------------------------ PostgreSQL


def test_encrypted_postgresql_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from backupd.scratch.postgres import Postgres

    checksum = "SELECT count(*), md5(string_agg(id || ':' || note || ':' || encode(blob, 'hex'), ',' ORDER BY id))" \
               " FROM items"  # fmt: skip
    with Postgres() as src, Postgres() as dst:
        src.create_role("bkp", "bkp pw 'x", "LOGIN SUPERUSER")
        src.execute("CREATE DATABASE encdb")
        src.execute(
            "CREATE TABLE items (id int PRIMARY KEY, note text, blob bytea);"
            f" INSERT INTO items SELECT i, '{MARKER} ' || i, decode(md5(i::text), 'hex')"
            " FROM generate_series(1, 500) i;"
            " CREATE TABLE empty (id int);",
            "encdb",
        )
        pw = write_secret(tmp_path / "bkp.pw", "bkp pw 'x")
        job = {"type": "postgresql", "schedule": "@daily", "host": src.host, "port": src.port, "user": "bkp",
               "password_file": str(pw), "databases": ["encdb"]}  # fmt: skip
        case = Case(tmp_path, "pg", job, capsys)
        row = case.run()
        arts = {p.name: p for p in case.artifacts(row)}
        assert set(arts) == {"globals.sql.zst.age", "db-encdb.pgdump.zst.age"}
        case.no_plaintext_left(MARKER.encode())
        case.verify_both_ways()

        monkeypatch.setenv("BACKUPD_RESTORE_PASSWORD_FILE", str(write_secret(tmp_path / "dst.pw", dst.password)))
        target = ["--to", dst.uri("restored"), "--database", "encdb"]
        case.refused(*target)
        assert not dst.execute("SELECT 1 FROM pg_database WHERE datname = 'restored'"), "nothing written"
        case.restored(*target)
        assert dst.execute(checksum, "restored") == src.execute(checksum, "encdb")

        report = case.drilled()
        assert all(c["ok"] for c in report["checks"]) and len(report["checks"]) >= 2

        plain = case.age_plaintext(arts["db-encdb.pgdump.zst.age"], tmp_path / "age.pgdump")
        listing = subprocess.run([src.tool("pg_restore"), "--list", str(plain)], capture_output=True, text=True,
                                 check=False)  # fmt: skip
        assert listing.returncode == 0, listing.stderr
        assert "TABLE DATA public items" in listing.stdout and "TABLE public empty" in listing.stdout
        sql = case.age_plaintext(arts["globals.sql.zst.age"], tmp_path / "age.globals.sql").read_text()
        assert "CREATE ROLE bkp" in sql and os.path.getsize(plain) > 0
