"""The MongoDB job end to end: real wire-protocol servers (nx-27017 via mongo_factory) for the native
engine and restores, a stand-in `mongodump` executable (a script that checks its arguments and emits a
fixture archive) for the mongodump engine, and one test per fault.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import pytest
import zstandard
from bson import ObjectId
from bson.int64 import Int64
from bson.timestamp import Timestamp

from backupd.cli import main as cli_main
from backupd.engine.compression import open_decompressed
from backupd.errors import StepError
from backupd.formats.mongo_archive import TERMINATOR, ArchiveWriter
from backupd.lab.content import write_config, write_secret
from backupd.scratch.mongo import MongoServer
from backupd.sources.mongo.native import restore_archive

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mongo-archive"
SECRET = "s3cr3t pass#'\"word"

# -- helpers ----------------------------------------------------------------------------------------


def seed(server: MongoServer) -> dict[str, int]:
    """Several dbs and collections, a few thousand documents of varied types, an empty one, indexes."""
    with server.client() as c:
        users = [
            {
                "_id": ObjectId(),
                "n": i,
                "email": f"user{i}@example.net",
                "name": "café 🎉" if i % 7 == 0 else f"name {i}",
                "big": Int64(2**40 + i),
                "score": i / 3,
                "active": i % 2 == 0,
                "joined": datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=i),
                "tags": ["a", "b", {"deep": [i, None]}],
                "blob": b"\x00\x01" * (i % 5),
                "nothing": None,
            }
            for i in range(2500)
        ]
        c.app.users.insert_many(users)
        c.app.users.create_index("email", unique=True)
        c.app.orders.insert_many([{"_id": i, "user": i % 100, "total": i * 1.5} for i in range(1200)])
        c.app.orders.create_index([("user", 1), ("total", -1)])
        c.app.create_collection("empty")
        c.analytics.events.insert_many([{"kind": "click", "at": i, "pad": "x" * (i % 300)} for i in range(700)])
    return {"app.users": 2500, "app.orders": 1200, "app.empty": 0, "analytics.events": 700}


def run_job(base: Path, job: dict[str, Any]) -> tuple[int, Path]:
    cfg = write_config(base / "etc", {"mongo": {"type": "mongodb", "schedule": "@daily", **job}})
    return cli_main(["--config", str(cfg), "run", "mongo"]), base / "etc" / "store" / "mongo"


def committed(job_dir: Path) -> list[Path]:
    return [p for p in job_dir.iterdir() if not p.name.startswith(".")] if job_dir.is_dir() else []


def manifest(job_dir: Path) -> dict[str, Any]:
    (backup,) = committed(job_dir)
    data: dict[str, Any] = json.loads((backup / "manifest.json").read_text())
    return data


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# -- native engine: dump from one server, restore into another --------------------------------------


def test_native_dump_and_restore_into_a_second_server(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path
) -> None:
    src, dst = mongo_factory(), mongo_factory()
    expected = seed(src)
    rc, job_dir = run_job(tmp_path, {"uri": src.uri, "engine": "native"})
    assert rc == 0
    man = manifest(job_dir)
    assert man["source"]["engine"] == "native"
    assert man["source"]["replica_set"] is None and "oplog" not in man["source"]
    (art,) = man["artifacts"]
    assert art["file"] == "mongo.archive.zst" and art["verification"]["ok"]
    docs = {k: v["documents"] for k, v in art["stats"]["namespaces"].items()}
    assert docs == expected
    assert art["stats"]["namespaces"]["app.users"]["crc"] == "ok"

    archive = committed(job_dir)[0] / "mongo.archive.zst"
    counts = restore_archive(archive, dst.uri, tmp_dir=tmp_path)
    assert counts == expected
    with src.client() as a, dst.client() as b:
        for ns in expected:
            db, coll = ns.split(".", 1)
            assert b[db][coll].count_documents({}) == expected[ns]
        for doc in a.app.users.find({"n": {"$in": [0, 7, 1234, 2499]}}):
            assert b.app.users.find_one({"_id": doc["_id"]}) == doc
        for doc in a.analytics.events.find({}).limit(50):
            assert b.analytics.events.find_one({"_id": doc["_id"]}) == doc
        names = {ix["name"] for ix in b.app.users.list_indexes()}
        assert len(names) == 2  # _id and the unique email index (the stand-in renames indexes)

    # a second restore refuses to overwrite, naming the namespace; drop=True replaces
    with pytest.raises(StepError, match=r"namespace analytics\.events already exists and is not empty"):
        restore_archive(archive, dst.uri)
    assert restore_archive(archive, dst.uri, drop=True) == expected
    with dst.client() as b:
        assert b.app.orders.count_documents({}) == 1200

    # renaming with $var$ placeholders
    renamed = restore_archive(archive, dst.uri, ns_from="app.$coll$", ns_to="copy.$coll$", drop=True)
    assert renamed == {"copy.users": 2500, "copy.orders": 1200, "copy.empty": 0, "analytics.events": 700}
    with dst.client() as b:
        assert b.copy.users.count_documents({}) == 2500
        assert b.copy.empty.count_documents({}) == 0


def test_native_include_exclude(mongo_server: MongoServer, tmp_path: Path) -> None:
    with mongo_server.client() as c:
        c.incl.keep.insert_many([{"i": i} for i in range(10)])
        c.incl.skip.insert_many([{"i": i} for i in range(5)])
        c.other.nope.insert_one({"i": 1})
    rc, job_dir = run_job(
        tmp_path, {"uri": mongo_server.uri, "engine": "native", "include": ["incl.*"], "exclude": ["*.skip"]}
    )
    assert rc == 0
    (art,) = manifest(job_dir)["artifacts"]
    assert {k: v["documents"] for k, v in art["stats"]["namespaces"].items()} == {"incl.keep": 10}


def test_restore_real_mongodump_archive_with_oplog_replay(mongo_factory: Callable[..., MongoServer]) -> None:
    dst = mongo_factory()
    with (FIXTURES / "dump-w-oplog.archive").open("rb") as fh:
        counts = restore_archive(fh, dst.uri, oplog_replay=True)
    assert counts["test.foo"] == 25
    assert counts["oplog"] == 16  # 18 entries, 2 of them config.system.sessions (skipped)
    with dst.client() as c:
        assert sorted(d["a"] for d in c.test.foo.find({"a": {"$gte": 10}})) == list(range(10, 26))
        assert "system.version" not in c.admin.list_collection_names()


# -- mongodump engine, with a stand-in executable -------------------------------------------------

STANDIN = r'''#!{python}
"""Stand-in mongodump: checks its arguments and --config file, then writes a fixture archive."""
import json, os, stat, sys
args = sys.argv[1:]
expect = json.loads({expect!r})
def die(msg):
    print("Failed: " + msg, file=sys.stderr)
    sys.exit(3)
for a in args:
    if expect["password"] in a:
        die("password in argv")
conf = [a for a in args if a.startswith("--config=")]
if len(conf) != 1:
    die("no --config")
path = conf[0].split("=", 1)[1]
if stat.S_IMODE(os.stat(path).st_mode) != 0o600:
    die("config file is not 0600")
text = open(path).read()
if json.loads(text.split(":", 1)[1].strip()) != expect["password"] or not text.startswith("password: "):
    die("password not in config: " + text)
rest = sorted(a for a in args if not a.startswith("--config="))
if rest != sorted(expect["args"]):
    die("unexpected args %r" % rest)
data = open(expect["archive"], "rb").read()
out = sys.stdout.buffer
mode = expect["mode"]
for ns, n in expect["done"].items():
    print("2024-01-01T00:00:00.000+0000\twriting %s to archive on stdout" % ns, file=sys.stderr)
if mode == "fail":
    out.write(data[: len(data) // 2]); out.flush()
    print("2024-01-01T00:00:00.000+0000\tFailed: error writing data for collection `test.foo` to disk: "
          "connection reset by peer", file=sys.stderr)
    sys.exit(1)
out.write(data)
for ns, n in expect["done"].items():
    print("2024-01-01T00:00:00.000+0000\tdone dumping %s (%d documents)" % (ns, n), file=sys.stderr)
'''


def install_standin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MongoServer,
    archive: bytes,
    *,
    done: dict[str, int],
    mode: str = "ok",
    extra_args: tuple[str, ...] = (),
) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "fixture.archive").write_bytes(archive)
    uri = f"mongodb://backup@{server.host}:{server.port}/?authSource=admin"
    expect = {
        "password": SECRET,
        "archive": str(tmp_path / "fixture.archive"),
        "mode": mode,
        "done": done,
        "args": ["--archive", f"--uri={uri}", "--readPreference=secondary", *extra_args],
    }
    script = bindir / "mongodump"
    script.write_text(STANDIN.format(python=sys.executable, expect=json.dumps(expect)))
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return uri


def standin_job(tmp_path: Path, uri: str, **extra: Any) -> dict[str, Any]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    pw = write_secret(secrets / "mongo.password", SECRET)
    return {"uri": uri, "password_file": str(pw), **extra}


def test_mongodump_engine_with_standin_binary(
    mongo_server: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (FIXTURES / "dump-w-oplog.archive").read_bytes()
    uri = install_standin(
        tmp_path, monkeypatch, mongo_server, data, done={"test.foo": 25}, extra_args=("--nsInclude=test.*",)
    )
    rc, job_dir = run_job(tmp_path, standin_job(tmp_path, uri, include=["test.*"]))  # engine auto
    assert rc == 0
    man = manifest(job_dir)
    src = man["source"]
    assert src["engine"] == "mongodump"
    assert src["tool_version"] == "r4.1.3-4-gd9eefb54" and src["server_version"]
    assert src["oplog"]["entries"] == 18
    (art,) = man["artifacts"]
    assert art["stats"]["namespaces"]["test.foo"]["documents"] == 25
    stored = committed(job_dir)[0] / "mongo.archive.zst"
    assert SECRET not in json.dumps(man)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes()) == data


# -- faults: exit 1, one line naming job/host and the reason, nothing committed ----------------------


def _corrupt_crc(data: bytes) -> bytes:
    """Flip one byte inside a document of test.foo (not a length or a NUL): only the CRC catches it."""
    i = data.index(b"\x10a\x00") + 3  # the int32 field "a" of the first document
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _never_closed() -> bytes:
    out = io.BytesIO()
    w = ArchiveWriter(out, "7.0.0", "test")
    w.add_namespace("test", "a", {"indexes": []})
    w.add_namespace("test", "b", {"indexes": []})
    w.begin_body()
    w.write_documents("test", "a", [bson.encode({"_id": 1})])
    w.close_namespace("test", "a")
    w.write_documents("test", "b", [bson.encode({"_id": 2})])
    return out.getvalue() + TERMINATOR  # test.b's segment ends, but it never gets its EOF block


FOO = (FIXTURES / "dump-w-oplog.archive").read_bytes()


@pytest.mark.parametrize(
    ("mode", "archive", "done", "reason"),
    [
        ("fail", FOO, {"test.foo": 25}, r"step dump: mongodump exited 1: .*connection reset by peer"),
        ("ok", FOO[: len(FOO) * 2 // 3], {}, r"step verify: mongo\.archive\.zst: .*"),
        ("ok", _corrupt_crc(FOO), {}, r"step verify: mongo\.archive\.zst: CRC mismatch"),
        ("ok", _never_closed(), {}, r"step verify: .*archive finished before all collections were closed.*test\.b"),
        ("ok", b"<html>502 Bad Gateway</html>\n" * 10, {}, r"step verify: .*not a mongodump archive"),
        ("ok", FOO, {"test.foo": 26}, r"step verify: .*reported 26 documents for test\.foo but the archive holds 25"),
    ],
    ids=["exits-nonzero-halfway", "truncated", "crc-mismatch", "namespace-without-eof", "garbage", "count-mismatch"],
)
def test_mongodump_standin_faults(
    mongo_server: MongoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    archive: bytes,
    done: dict[str, int],
    reason: str,
) -> None:
    uri = install_standin(tmp_path, monkeypatch, mongo_server, archive, done=done, mode=mode)
    capsys.readouterr()
    rc, job_dir = run_job(tmp_path, standin_job(tmp_path, uri, engine="mongodump"))
    assert rc == 1
    line = one_error_line(capsys)
    assert line.startswith("backupd: job mongo, host ") or "job mongo" in line
    assert f"{mongo_server.host}:{mongo_server.port}" in line
    assert re.search(reason, line), line
    assert committed(job_dir) == []
    assert not job_dir.is_dir() or not list(job_dir.iterdir())  # the partial directory is gone too


def test_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capsys.readouterr()
    rc, job_dir = run_job(
        tmp_path, {"uri": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=800", "engine": "native"}
    )
    assert rc == 1
    line = one_error_line(capsys)
    assert f"job mongo, host 127.0.0.1:{port}, step connect: cannot reach the server" in line
    assert committed(job_dir) == []


def test_credentials_rejected_is_one_line(
    mongo_server: MongoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nx-27017 has no authentication: any login fails in the handshake, which must still be one line."""
    uri = f"mongodb://backup@{mongo_server.host}:{mongo_server.port}/?authSource=admin"
    capsys.readouterr()
    rc, job_dir = run_job(tmp_path, standin_job(tmp_path, uri, engine="native"))
    assert rc == 1
    line = one_error_line(capsys)
    assert f"job mongo, host {mongo_server.host}:{mongo_server.port}, step connect:" in line
    assert SECRET not in line
    assert committed(job_dir) == []


def test_oplog_replay_applies_inserts_updates_and_deletes(mongo_factory: Callable[..., MongoServer]) -> None:
    """An archive as a replica-set dump would hold it: data, then oplog entries of writes made meanwhile."""
    dst = mongo_factory()
    out = io.BytesIO()
    w = ArchiveWriter(out, "7.0.4", "test")
    w.add_namespace("shop", "items", {"indexes": []})
    w.add_oplog()
    w.begin_body()
    w.write_documents("shop", "items", [bson.encode({"_id": i, "n": i, "tags": {"a": 1}}) for i in range(5)])
    w.close_namespace("shop", "items")
    ts = iter(range(1, 100))
    ops = [
        {"op": "i", "ns": "shop.items", "o": {"_id": 4, "n": 4, "tags": {"a": 1}}},  # already there: upsert
        {"op": "i", "ns": "shop.items", "o": {"_id": 9, "n": 9}},
        {
            "op": "u",
            "ns": "shop.items",
            "o2": {"_id": 1},
            "o": {"$v": 2, "diff": {"u": {"n": 100}, "stags": {"i": {"b": 2}}}},
        },
        {"op": "u", "ns": "shop.items", "o2": {"_id": 2}, "o": {"$set": {"n": 200}}},
        {"op": "u", "ns": "shop.items", "o2": {"_id": 3}, "o": {"_id": 3, "replaced": True}},
        {"op": "d", "ns": "shop.items", "o": {"_id": 0}},
        {"op": "n", "ns": "", "o": {"msg": "periodic noop"}},
        {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [{"op": "i", "ns": "shop.items", "o": {"_id": 10}}]}},
    ]
    w.write_documents("", "oplog", [bson.encode({"ts": Timestamp(1000, next(ts)), **op}) for op in ops])
    w.close_namespace("", "oplog")
    w.close()
    counts = restore_archive(io.BytesIO(out.getvalue()), dst.uri, oplog_replay=True)
    assert counts == {"shop.items": 5, "oplog": 7}
    with dst.client() as c:
        docs = {d["_id"]: d for d in c.shop.items.find()}
    assert sorted(docs) == [1, 2, 3, 4, 9, 10]
    assert docs[1] == {"_id": 1, "n": 100, "tags": {"a": 1, "b": 2}}
    assert docs[2]["n"] == 200 and docs[3] == {"_id": 3, "replaced": True}


def test_restore_of_a_broken_archive_is_one_clean_error(mongo_factory: Callable[..., MongoServer]) -> None:
    dst = mongo_factory()
    with pytest.raises(StepError, match=r"step restore: archive: .*CRC mismatch"):
        restore_archive(io.BytesIO(_corrupt_crc(FOO)), dst.uri)
    with pytest.raises(StepError, match=r"step restore: archive: .*not a mongodump archive"):
        restore_archive(io.BytesIO(b"garbage!" * 4), dst.uri)


# -- restore through mongorestore, with a stand-in executable ---------------------------------------

RESTORE_STANDIN = r'''#!{python}
"""Stand-in mongorestore: checks arguments and --config, keeps stdin, reports counts as mongorestore does."""
import json, os, stat, sys
args = sys.argv[1:]
expect = json.loads({expect!r})
def die(msg):
    print("Failed: " + msg, file=sys.stderr)
    sys.exit(3)
if any(expect["password"] in a for a in args):
    die("password in argv")
conf = [a for a in args if a.startswith("--config=")]
if len(conf) != 1 or stat.S_IMODE(os.stat(conf[0].split("=", 1)[1]).st_mode) != 0o600:
    die("no 0600 --config")
if open(conf[0].split("=", 1)[1]).read() != "password: " + json.dumps(expect["password"]) + "\n":
    die("password not in config")
rest = [a for a in args if not a.startswith("--config=")]
if rest != expect["args"]:
    die("unexpected args %r" % rest)
data = sys.stdin.buffer.read()
open(expect["received"], "wb").write(data)
for ns, n in expect["counts"].items():
    bad = expect.get("failures", 0)
    print("2024-01-01T00:00:00.000+0000\tfinished restoring %s (%d documents, %d failures)" % (ns, n - bad, bad),
          file=sys.stderr)
'''


def test_restore_with_mongorestore_standin(
    mongo_server: MongoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`backupd restore --mongorestore` pipes the decompressed archive into mongorestore, with the password
    only in a 0600 --config file and the rename and replay flags passed through."""
    counts = seed(mongo_server)
    rc, job_dir = run_job(tmp_path, {"uri": mongo_server.uri, "engine": "native", "oplog": False})
    assert rc == 0, capsys.readouterr().err
    (backup,) = committed(job_dir)
    art = json.loads((backup / "manifest.json").read_text())["artifacts"][0]
    target = "mongodb://admin@127.0.0.1:1/?authSource=admin"
    expect = {
        "password": SECRET,
        "received": str(tmp_path / "received.archive"),
        "counts": {f"copy_{ns}": n for ns, n in counts.items()},
        "args": [
            "--archive", f"--uri={target}", "--drop", "--nsFrom=$db$.$c$", "--nsTo=copy_$db$.$c$", "--oplogReplay"
        ],
    }
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mongorestore"
    script.write_text(RESTORE_STANDIN.format(python=sys.executable, expect=json.dumps(expect)))
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    pw = write_secret(tmp_path / "target.password", SECRET)
    argv = ["--config", str(tmp_path / "etc" / "backupd.toml"), "restore", "mongo", "--to", target,
            "--password-file", str(pw), "--yes", "--ns-from", "$db$.$c$", "--ns-to", "copy_$db$.$c$",
            "--oplog-replay", "--mongorestore"]  # fmt: skip
    capsys.readouterr()
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    _, stream = open_decompressed(backup / art["file"])
    with stream:
        assert (tmp_path / "received.archive").read_bytes() == stream.read()
    some_ns, n = next(iter(counts.items()))
    assert f"{n} copy_{some_ns}" in out and SECRET not in out + err



def test_mongorestore_failures_fail_the_restore(
    mongo_factory: Callable[..., MongoServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """mongorestore exits 0 when documents failed to restore (duplicate keys, say): its own failure count
    makes the restore fail, naming the namespaces."""
    mongo_server = mongo_factory()
    counts = seed(mongo_server)
    rc, job_dir = run_job(tmp_path, {"uri": mongo_server.uri, "engine": "native", "oplog": False})
    assert rc == 0, capsys.readouterr().err
    committed(job_dir)
    target = "mongodb://admin@127.0.0.1:1/?authSource=admin"
    expect = {
        "password": SECRET,
        "received": str(tmp_path / "received.archive"),
        "counts": {f"copy_{ns}": n for ns, n in counts.items()},
        "failures": 2,
        "args": [
            "--archive", f"--uri={target}", "--drop", "--nsFrom=$db$.$c$", "--nsTo=copy_$db$.$c$", "--oplogReplay"
        ],
    }
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mongorestore"
    script.write_text(RESTORE_STANDIN.format(python=sys.executable, expect=json.dumps(expect)))
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    pw = write_secret(tmp_path / "target.password", SECRET)
    argv = ["--config", str(tmp_path / "etc" / "backupd.toml"), "restore", "mongo", "--to", target,
            "--password-file", str(pw), "--yes", "--ns-from", "$db$.$c$", "--ns-to", "copy_$db$.$c$",
            "--oplog-replay", "--mongorestore"]  # fmt: skip
    capsys.readouterr()
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    assert rc == 1 and "document(s) failed to restore" in err and "copy_" in err
    assert "Traceback" not in err and SECRET not in out + err
