"""Native engine pieces the stand-in server cannot show: collection options, index directions and views
round-tripping through the archive writer and reader, namespace patterns, the oplog window rules, oplog
diff translation, error wording, and the mongodump/mongorestore command lines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.int64 import Int64
from bson.son import SON
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from backupd.errors import StepError, UsageError
from backupd.formats.mongo_archive import ArchiveWriter, MongoArchiveChecker, open_archive
from backupd.sources.mongo.config import MongoJob
from backupd.sources.mongo.native import (
    CollSpec,
    NsFilter,
    NsRenamer,
    OplogError,
    ServerInfo,
    check_window,
    diff_to_updates,
    explain,
    host_label,
    ns_pattern,
    oplog_query,
    oplog_start,
    strip_credentials,
)
from backupd.sources.mongo.native.restore import _create_options, _index_specs, _is_view, _plan
from backupd.sources.mongo.tools import (
    cross_check,
    decide_oplog,
    mongodump_argv,
    mongorestore_argv,
    parse_counts,
    select_engine,
    tool_config_yaml,
)

SPECS = [
    CollSpec(
        "shop",
        "carts",
        "collection",
        {"capped": True, "size": Int64(1 << 20), "max": 5000, "collation": {"locale": "fr", "strength": 2}},
        "0123456789abcdef0123456789abcdef",
        [
            SON([("v", 2), ("key", SON([("_id", 1)])), ("name", "_id_")]),
            SON([("v", 2), ("key", SON([("user", 1), ("at", -1)])), ("name", "user_1_at_-1"), ("unique", True)]),
            SON([("v", 2), ("key", SON([("loc", "2dsphere")])), ("name", "loc"), ("2dsphereIndexVersion", 3)]),
            SON([("v", 2), ("key", SON([("exp", 1)])), ("name", "ttl"), ("expireAfterSeconds", 3600)]),
        ],
    ),
    CollSpec("shop", "open_carts", "view", {"viewOn": "carts", "pipeline": [{"$match": {"open": True}}]}, None),
    CollSpec("shop", "validated", "collection", {"validator": {"$jsonSchema": {"required": ["a"]}}}, None, []),
]


def _archive(specs: list[CollSpec]) -> bytes:
    out = io.BytesIO()
    w = ArchiveWriter(out, "7.0.4", "test")
    for s in specs:
        w.add_namespace(s.db, s.name, s.metadata, s.type)
    w.begin_body()
    for s in specs:
        if s.type != "view":
            w.write_documents(s.db, s.name, [bson.encode({"_id": i}) for i in range(3)])
        w.close_namespace(s.db, s.name)
    w.close()
    return out.getvalue()


def test_options_indexes_and_views_round_trip_through_the_archive() -> None:
    data = _archive(SPECS)
    checker = MongoArchiveChecker()
    checker.feed(data)
    assert checker.finish().ok
    prelude, docs = open_archive(io.BytesIO(data))
    by_name = {e.collection: e for e in prelude.entries}
    carts = by_name["carts"]
    assert _create_options(carts) == {
        "capped": True,
        "size": 1 << 20,
        "max": 5000,
        "collation": {"locale": "fr", "strength": 2},
    }
    specs = _index_specs(carts)  # _id_ is implicit: never re-created
    assert [dict(s["key"]) for s in specs] == [{"user": 1, "at": -1}, {"loc": "2dsphere"}, {"exp": 1}]
    assert list(specs[0]["key"]) == ["user", "at"]  # key order is the index: it must survive
    assert specs[0]["unique"] is True and specs[2]["expireAfterSeconds"] == 3600
    assert carts.metadata["uuid"] == "0123456789abcdef0123456789abcdef"
    view = by_name["open_carts"]
    assert _is_view(view) and _create_options(view)["pipeline"] == [{"$match": {"open": True}}]
    assert _index_specs(view) == []
    assert _create_options(by_name["validated"]) == {"validator": {"$jsonSchema": {"required": ["a"]}}}
    assert sum(1 for _ in docs) == 6


def test_restore_plan_renames_and_refuses_collisions() -> None:
    prelude, _ = open_archive(io.BytesIO(_archive(SPECS)))
    plan = _plan(prelude.entries, prelude.server_version, NsRenamer(["shop.$c$"], ["shop_copy.$c$"]))
    assert sorted(t.ns.name for t in plan.values()) == [
        "shop_copy.carts",
        "shop_copy.open_carts",
        "shop_copy.validated",
    ]
    with pytest.raises(UsageError, match=r"would both restore into x\.y"):
        _plan(prelude.entries, prelude.server_version, NsRenamer(["shop.carts", "shop.validated"], ["x.y", "x.y"]))


def test_timeseries_documents_go_to_the_buckets_of_the_renamed_collection() -> None:
    out = io.BytesIO()
    w = ArchiveWriter(out, "7.0.4", "test")
    w.add_namespace("m", "temps", {"options": {"timeseries": {"timeField": "t"}}}, "timeseries")
    w.begin_body()
    w.write_documents("m", "temps", [bson.encode({"_id": 1})])
    w.close_namespace("m", "temps")
    w.close()
    prelude, docs = open_archive(io.BytesIO(out.getvalue()))
    plan = _plan(prelude.entries, prelude.server_version, NsRenamer(["m.temps"], ["n.t2"]))
    ((src, target),) = plan.items()
    assert src.name == "m.system.buckets.temps" and target.data.name == "n.system.buckets.t2"
    assert [ns for ns, _ in docs] == [src]


@pytest.mark.parametrize(
    ("pattern", "ns", "hit"),
    [
        ("app.*", "app.users", True),
        ("app.*", "apps.users", False),
        ("*.users", "x.users", True),
        ("*", "a.b.c", True),
        (r"a\*.b", "a*.b", True),
        (r"a\*.b", "ax.b", False),
        ("a.b", "a.bc", False),
    ],
)
def test_ns_patterns_match_like_mongodump(pattern: str, ns: str, hit: bool) -> None:
    assert bool(ns_pattern(pattern).fullmatch(ns)) is hit


def test_ns_filter_include_then_exclude() -> None:
    f = NsFilter(("app.*", "logs.keep"), ("*.tmp*",))
    assert [f(n) for n in ("app.users", "app.tmp1", "logs.keep", "logs.other")] == [True, False, True, False]
    assert NsFilter()("anything.at_all")


def test_ns_renamer_placeholders() -> None:
    r = NsRenamer(["prod.$coll$", "$db$.legacy_$c$"], ["staging.$coll$", "$db$_old.$c$"])
    assert r("prod.users") == "staging.users"
    assert r("crm.legacy_accounts") == "crm_old.accounts"
    assert r("other.thing") == "other.thing"
    with pytest.raises(UsageError, match=r"same \$variables\$"):
        NsRenamer(["a.$x$"], ["b.$y$"])
    with pytest.raises(UsageError, match="same number"):
        NsRenamer(["a.$x$"], [])


def test_oplog_window_rules() -> None:
    t = Timestamp
    assert oplog_start(t(200, 3), None) == t(200, 3)
    assert oplog_start(t(200, 3), t(150, 1)) == t(150, 1)  # an open transaction started earlier
    with pytest.raises(OplogError, match="empty"):
        oplog_start(None, None)
    check_window(t(100, 1), t(200, 3))
    check_window(t(200, 3), t(200, 3))
    with pytest.raises(OplogError, match=r"oplog overflow.*200:4.*200:3"):
        check_window(t(200, 4), t(200, 3))
    assert oplog_query(t(1, 1), t(2, 2)) == {"ts": {"$gte": t(1, 1), "$lte": t(2, 2)}}


def test_oplog_namespace_in_the_archive_reports_its_range() -> None:
    out = io.BytesIO()
    w = ArchiveWriter(out, "7.0.4", "test")
    w.add_namespace("a", "b", {})
    w.add_oplog()
    w.begin_body()
    w.close_namespace("a", "b")
    ops = [bson.encode({"ts": Timestamp(10, i), "op": "n", "ns": "", "o": {}}) for i in range(1, 4)]
    w.write_documents("", "oplog", ops)
    w.close_namespace("", "oplog")
    w.close()
    c = MongoArchiveChecker()
    c.feed(out.getvalue())
    res = c.finish()
    assert res.ok and res.facts["oplog"] == {"entries": 3, "first_ts": {"t": 10, "i": 1}, "last_ts": {"t": 10, "i": 3}}


def test_oplog_v2_diffs_become_updates() -> None:
    diff = {
        "u": {"a": 1},
        "i": {"b": 2},
        "d": {"c": False},
        "sx": {"u": {"y": 3}},
        "sarr": {"a": True, "l": 2, "u1": 9},
    }
    assert diff_to_updates(diff) == [
        {"$set": {"a": 1, "b": 2}, "$unset": {"c": ""}},
        {"$set": {"x.y": 3}},
        {"$push": {"arr": {"$each": [], "$slice": 2}}},
        {"$set": {"arr.1": 9}},
    ]


def test_driver_errors_read_as_one_operator_line() -> None:
    auth = OperationFailure("Authentication failed.", code=18)
    assert explain(auth) == "authentication failed (check the user in uri and password_file)"
    sel = ServerSelectionTimeoutError("db1:27017: [Errno 111] Connection refused (configured timeouts: x), Timeout: 1s")
    assert explain(sel) == "cannot reach the server: db1:27017: [Errno 111] Connection refused"
    assert explain(KeyError("payload")).startswith("connection handshake failed")


def test_uris_for_labels_and_probes() -> None:
    uri = "mongodb://backup@db1:27017,db2:27017/admin?replicaSet=rs0&authSource=admin&tls=true"
    assert host_label(uri) == "db1:27017,db2:27017"
    assert strip_credentials(uri) == "mongodb://db1:27017,db2:27017/admin?replicaSet=rs0&tls=true"


def _job(**kw: Any) -> MongoJob:
    return MongoJob(type="mongodb", schedule="@daily", uri="mongodb://backup@db1/", **kw)


def test_mongodump_command_line_carries_no_password(tmp_path: Path) -> None:
    argv = mongodump_argv(
        "/usr/bin/mongodump",
        "mongodb://backup@db1/",
        read_preference="secondary",
        oplog=True,
        include=["app.*"],
        exclude=["app.tmp"],
        config_file="/run/x/mongodump.yaml",
    )
    assert argv == [
        "/usr/bin/mongodump",
        "--config=/run/x/mongodump.yaml",
        "--archive",
        "--uri=mongodb://backup@db1/",
        "--readPreference=secondary",
        "--oplog",
        "--nsInclude=app.*",
        "--nsExclude=app.tmp",
    ]
    assert "--gzip" not in argv
    restore = mongorestore_argv(
        "mongorestore", "mongodb://h/", drop=True, ns_pairs=[("a.$c$", "b.$c$")], oplog_replay=True, config_file=None
    )
    assert restore == [
        "mongorestore",
        "--archive",
        "--uri=mongodb://h/",
        "--drop",
        "--nsFrom=a.$c$",
        "--nsTo=b.$c$",
        "--oplogReplay",
    ]


@pytest.mark.parametrize("password", ["plain", "with: colon # hash", "quo\"te'\\back", "ünï 🎉", "line\nbreak"])
def test_config_yaml_carries_any_password(password: str) -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(tool_config_yaml(password)) == {"password": password}


def test_counts_from_mongodump_stderr_and_cross_check() -> None:
    lines = [
        "2024-05-01T10:00:00.000+0000\twriting app.users to archive on stdout",
        "2024-05-01T10:00:01.000+0000\tdone dumping app.users (2500 documents)",
        "2024-05-01T10:00:01.000+0000\tdone dumping app.one (1 document)",
    ]
    counts = parse_counts(lines)
    assert counts == {"app.users": 2500, "app.one": 1}
    stats = {"namespaces": {"app.users": {"documents": 2500}, "app.one": {"documents": 1}}}
    assert cross_check(counts, stats) is None
    assert "holds 2499" in str(
        cross_check(counts, {"namespaces": {**stats["namespaces"], "app.users": {"documents": 2499}}})
    )
    assert "not in the archive" in str(cross_check({"x.y": 1}, stats))


def test_oplog_decision() -> None:
    rs = ServerInfo("7.0.4", "rs0", "db1:27017", True)
    standalone = ServerInfo("7.0.4", None, None, False)
    assert decide_oplog(_job(), rs, "h") is True
    assert decide_oplog(_job(), standalone, "h") is False
    assert decide_oplog(_job(oplog=False), rs, "h") is False
    with pytest.raises(StepError, match="needs a replica set"):
        decide_oplog(_job(oplog=True), standalone, "h")


def test_engine_selection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert select_engine(_job()) == ("native", None)
    with pytest.raises(StepError, match="no mongodump on PATH"):
        select_engine(_job(engine="mongodump"))
    tool = tmp_path / "mongodump"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert select_engine(_job()) == ("mongodump", str(tool))
    assert select_engine(_job(engine="native")) == ("native", None)
    assert json.loads(json.dumps(select_engine(_job())))


def test_pinning_an_srv_uri_keeps_tls_and_auth_source() -> None:
    from backupd.sources.mongo.native import direct_uri

    srv = "mongodb+srv://backup@cluster0.example.net/app?retryWrites=true&replicaSet=rs0"
    assert direct_uri(srv, "db2.example.net:27017", "admin") == (
        "mongodb://backup@db2.example.net:27017/app?retryWrites=true&tls=true&authSource=admin"
        "&directConnection=true"
    )
    explicit = "mongodb+srv://cluster0.example.net/?tls=false"
    assert direct_uri(explicit, "h:1") == "mongodb://h:1/?tls=false&directConnection=true"
    plain = "mongodb://a:1,b:2/app?replicaSet=rs0&readPreference=secondary"
    assert direct_uri(plain, "b:2", "admin") == "mongodb://b:2/app?directConnection=true"
