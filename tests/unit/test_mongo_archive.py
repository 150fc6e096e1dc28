"""mongodump archive checker, writer and reader, against archives written by the real mongodump."""

from __future__ import annotations

import io
import itertools
import random
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.int64 import Int64
from bson.json_util import loads
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.formats.base import CheckResult
from backupd.formats.mongo_archive import (
    MAGIC,
    TERMINATOR,
    ArchiveError,
    ArchiveWriter,
    MongoArchiveChecker,
    Namespace,
    Prelude,
    crc64_xz,
    describe,
    iter_archive,
    metadata_json,
    open_archive,
    sniff,
)
from tests.conftest import feed_in_chunks

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mongo-archive"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.archive").read_bytes()


def check(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(MongoArchiveChecker(), data, chunk)


def items(data: bytes) -> Iterator[tuple[int, int]]:
    """(offset, size) of every item after the magic; size -1 is a terminator. Test-side walker."""
    pos = 4
    while pos < len(data):
        size = struct.unpack_from("<i", data, pos)[0]
        yield pos, size
        pos += 4 if size == -1 else size


def body_documents(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every document inside a data segment (not headers, not the prelude)."""
    out: list[tuple[int, int]] = []
    seen_prelude_end = False
    expect_header = True
    for pos, size in items(data):
        if size == -1:
            seen_prelude_end = True
            expect_header = True
        elif not seen_prelude_end:
            continue
        elif expect_header:
            expect_header = False
        else:
            out.append((pos, size))
    return out


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def doc(i: int, pad: int = 20) -> bytes:
    return bson.encode({"_id": i, "v": "x" * pad})


# -- the real mongodump archives -------------------------------------------------------------------


def test_sniff() -> None:
    assert sniff(fixture("test.bar"))
    assert sniff(MAGIC)
    assert not sniff(b"\x1f\x8b\x08\x00")
    assert not sniff(b"")


def test_crc64_xz_check_value() -> None:
    assert crc64_xz(b"123456789") == 0x995DC9BBDF1939FA
    assert crc64_xz(b"6789", crc64_xz(b"12345")) == 0x995DC9BBDF1939FA
    assert crc64_xz(b"") == 0


def test_test_bar_fixture() -> None:
    result = check(fixture("test.bar"))
    assert result.ok, result.errors
    assert result.stats["namespaces"] == {
        "test.bar": {"documents": 1, "bytes": 35, "type": "collection", "crc": "ok"},
        "admin.system.version": {"documents": 1, "bytes": 59, "type": "collection", "crc": "ok"},
    }
    assert result.stats["documents"] == 2
    assert result.facts["server_version"] == "3.4.3"
    assert result.facts["tool_version"] == "r3.4.3"
    assert result.facts["concurrent_collections"] == 4
    assert "oplog" not in result.facts


def test_dump_with_oplog_fixture() -> None:
    result = check(fixture("dump-w-oplog"))
    assert result.ok, result.errors
    ns = result.stats["namespaces"]
    assert {k: v["documents"] for k, v in ns.items()} == {
        "test.foo": 25,
        "admin.system.version": 1,
        "oplog": 18,
    }
    assert ns["oplog"]["type"] == "oplog"
    assert all(v["crc"] == "ok" for v in ns.values())
    oplog = result.facts["oplog"]
    assert oplog["entries"] == 18
    assert oplog["first_ts"] == {"t": 1538587928, "i": 1}
    assert oplog["last_ts"] == {"t": 1538587943, "i": 1}
    lines = describe(result)
    assert any("test.foo" in line and "25 docs" in line and "crc ok" in line for line in lines)
    assert any(line.strip().startswith("oplog") and "18 docs" in line for line in lines)


def test_bad_format_fixture_fails_on_metadata_but_framing_is_fine() -> None:
    result = check(fixture("bad-format"))
    assert not result.ok
    assert len(result.errors) == 1
    assert "metadata" in result.errors[0]
    assert "test.ixtest" in result.errors[0]
    # The framing and CRC of the same file are valid: the namespace was closed with a matching CRC.
    assert result.stats["namespaces"]["test.ixtest"] == {
        "documents": 0,
        "bytes": 0,
        "type": "collection",
        "crc": "ok",
    }


@pytest.mark.parametrize("name", ["test.bar", "dump-w-oplog", "bad-format"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000])
def test_chunking_does_not_change_the_result(name: str, chunk: int) -> None:
    data = fixture(name)
    assert check(data, chunk).to_dict() == check(data).to_dict()


# -- corruption ------------------------------------------------------------------------------------


def test_flipped_byte_in_document_is_a_crc_mismatch_naming_the_namespace() -> None:
    data = fixture("dump-w-oplog")
    foo_docs = [(p, s) for p, s in body_documents(data) if s == 29]  # test.foo's {_id, a} documents
    pos, size = foo_docs[10]
    result = check(flip(data, pos + size // 2))
    assert not result.ok
    assert "CRC mismatch for namespace test.foo" in result.errors[0]
    assert "offset" in result.errors[0]
    assert result.stats["namespaces"]["test.foo"]["crc"] == "mismatch"


def test_every_flipped_byte_inside_body_documents_is_detected() -> None:
    data = fixture("dump-w-oplog")
    for pos, size in body_documents(data):
        for offset in range(pos, pos + size):
            result = check(flip(data, offset))
            assert not result.ok, f"flip at {offset} not detected"


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("collection", "not in the prelude"),
        ("length", "BSON"),
        ("eof_crc", "CRC mismatch for namespace admin.system.version"),
    ],
)
def test_flipped_byte_in_namespace_header(target: str, expect: str) -> None:
    data = fixture("test.bar")
    header = data.index(b"\x02collection\x00", 534)  # first namespace header after the prelude
    eof_header = data.index(b"\x08EOF\x00\x01", header)
    offset = {
        "collection": header + len(b"\x02collection\x00") + 4 + 2,  # inside "system.version"
        "length": 534,
        "eof_crc": eof_header + len(b"\x08EOF\x00\x01") + len(b"\x12CRC\x00") + 3,
    }[target]
    result = check(flip(data, offset, 0x01))  # "system.version" -> "syrtem.version": still valid UTF-8
    assert not result.ok
    assert expect in result.errors[0]


@pytest.mark.parametrize("name", ["test.bar", "dump-w-oplog", "bad-format"])
def test_every_truncation_of_a_fixture_fails(name: str) -> None:
    data = fixture(name)
    for cut in range(len(data)):
        result = check(data[:cut])
        assert not result.ok, f"truncated at {cut} passed"
        assert result.errors


def test_truncation_names_the_problem() -> None:
    data = fixture("dump-w-oplog")
    assert "truncated" in check(data[:-2]).errors[0]
    assert "no terminator" in check(data[:-4]).errors[0]
    assert "before all collections were closed" in check(data[:1628]).errors[0]
    assert "empty stream" in check(b"").errors[0]


def test_garbage_is_rejected() -> None:
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(4096))
    result = check(garbage)
    assert not result.ok
    assert "magic" in result.errors[0]
    result = check(MAGIC + garbage)
    assert not result.ok
    gz = check(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    assert not gz.ok and "not a mongodump archive" in gz.errors[0]


@pytest.mark.parametrize("extra", [b"\x00", TERMINATOR, b"garbage after the end"])
def test_trailing_bytes_after_the_last_namespace_are_an_error(extra: bytes) -> None:
    data = fixture("test.bar")
    result = check(data + extra)
    assert not result.ok
    assert "after the last namespace was closed" in result.errors[0]
    assert str(len(data)) in result.errors[0]


def test_repeated_eof_block_is_an_error() -> None:
    data = fixture("test.bar")
    last_eof_block = data[835:]
    result = check(data + last_eof_block)
    assert not result.ok


# -- hand-built archives for the individual framing rules -------------------------------------------


def header(db: str, coll: str, eof: bool = False, crc: int = 0) -> bytes:
    return bson.encode({"db": db, "collection": coll, "EOF": eof, "CRC": Int64(crc)})


def prelude(*namespaces: tuple[str, str]) -> bytes:
    head = bson.encode({"concurrent_collections": 1, "version": "0.1", "server_version": "7.0.0", "tool_version": "t"})
    entries = b"".join(
        bson.encode({"db": d, "collection": c, "metadata": '{"indexes":[]}', "size": 0, "type": "collection"})
        for d, c in namespaces
    )
    return MAGIC + head + entries + TERMINATOR


def eof_block(db: str, coll: str, crc: int = 0) -> bytes:
    signed = crc - (1 << 64) if crc >= 1 << 63 else crc
    return header(db, coll, True, signed) + TERMINATOR


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (TERMINATOR, "consecutive terminators"),
        (header("a", "b") + TERMINATOR + TERMINATOR, "consecutive terminators"),
        (header("a", "") + TERMINATOR, "missing a collection"),
        (header("a", "zz") + TERMINATOR, "not in the prelude"),
        (eof_block("a", "b") + header("a", "b") + TERMINATOR, "already closed"),
        (header("a", "b", True) + doc(1) + TERMINATOR, "document after the EOF header"),
        (header("a", "b") + struct.pack("<i", 3) + TERMINATOR, "neither a valid BSON length"),
        (header("a", "b") + struct.pack("<i", 17 * 1024 * 1024), "neither a valid BSON length"),
        (header("a", "b") + doc(1)[:-1] + b"\x01" + TERMINATOR, "does not end with a NUL"),
        (eof_block("a", "b", crc=1), "CRC mismatch for namespace a.b"),
        (b"\x06\x00\x00\x00\x99\x00" + TERMINATOR, "namespace header is not valid BSON"),
    ],
)
def test_framing_rules(body: bytes, expect: str) -> None:
    result = check(prelude(("a", "b"), ("a", "c")) + body)
    assert not result.ok
    assert expect in result.errors[0], result.errors


def test_hand_built_minimal_archive_passes_and_crc_is_over_raw_documents() -> None:
    docs = [doc(i) for i in range(3)]
    body = header("a", "b") + b"".join(docs) + TERMINATOR + eof_block("a", "b", crc64_xz(b"".join(docs)))
    result = check(prelude(("a", "b")) + body)
    assert result.ok, result.errors
    assert result.stats["namespaces"]["a.b"]["documents"] == 3
    # An EOF block with no data segment at all is accepted (CRC of nothing is 0).
    assert check(prelude(("a", "b")) + eof_block("a", "b")).ok
    # An archive with an empty prelude is just magic, header and terminator.
    assert check(prelude()).ok


def test_missing_prelude_namespace_is_reported() -> None:
    result = check(prelude(("a", "b"), ("a", "c")) + eof_block("a", "b"))
    assert not result.ok
    assert "a.c" in result.errors[0]
    assert result.stats["namespaces"]["a.c"]["crc"] == "unchecked"


# -- writer and reader -------------------------------------------------------------------------------


def build_archive() -> tuple[bytes, dict[str, list[bytes]]]:
    """Several namespaces: interleaved segments, an empty collection, a view, timeseries and the oplog."""
    out = io.BytesIO()
    writer = ArchiveWriter(out, server_version="7.0.14", tool_version="backupd-test", concurrent_collections=2)
    index = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    writer.add_namespace("shop", "orders", {"indexes": [index], "uuid": uuid.UUID(int=1)}, "collection")
    writer.add_namespace("shop", "users", {"indexes": [index], "options": {"validationLevel": "strict"}})
    writer.add_namespace("shop", "empty", {"indexes": [index]}, "collection")
    writer.add_namespace("shop", "big_orders", {"options": {"viewOn": "orders", "pipeline": []}}, "view")
    ts_options = {"timeseries": {"timeField": "t", "granularity": "seconds"}}
    writer.add_namespace("shop", "metrics", {"options": ts_options}, "timeseries")
    writer.add_oplog()
    writer.begin_body()
    expected: dict[str, list[bytes]] = {"shop.orders": [], "shop.users": [], "oplog": []}
    expected["shop.system.buckets.metrics"] = []
    for round_ in range(5):  # interleave segments the way the multiplexer does
        orders = [doc(round_ * 100 + i, pad=50) for i in range(7)]
        users = [doc(round_ * 100 + i, pad=5) for i in range(3)]
        writer.write_documents("shop", "orders", orders)
        writer.write_documents("shop", "users", users)
        expected["shop.orders"] += orders
        expected["shop.users"] += users
    buckets = [bson.encode({"_id": i, "control": {"version": 1}}) for i in range(4)]
    writer.write_documents("shop", "metrics", buckets[:2])
    writer.write_documents("shop", "system.buckets.metrics", buckets[2:])
    expected["shop.system.buckets.metrics"] = buckets
    writer.close_namespace("shop", "users")
    writer.write_documents("shop", "orders", [doc(999)])
    expected["shop.orders"].append(doc(999))
    writer.close_namespace("shop", "orders")
    writer.close_namespace("shop", "empty")
    writer.close_namespace("shop", "big_orders")
    writer.close_namespace("shop", "metrics")
    entries = [bson.encode({"ts": Timestamp(1700000000 + i, 1), "op": "n", "o": {}}) for i in range(5)]
    writer.write_documents("", "oplog", entries)
    expected["oplog"] = entries
    writer.close_namespace("", "oplog")
    writer.close()
    return out.getvalue(), expected


def test_writer_output_passes_the_checker_with_matching_counts() -> None:
    data, expected = build_archive()
    result = check(data)
    assert result.ok, result.errors
    ns = result.stats["namespaces"]
    assert ns["shop.orders"] == {
        "documents": 36,
        "bytes": sum(map(len, expected["shop.orders"])),
        "type": "collection",
        "crc": "ok",
    }
    assert ns["shop.users"]["documents"] == 15
    assert ns["shop.empty"] == {"documents": 0, "bytes": 0, "type": "collection", "crc": "ok"}
    assert ns["shop.big_orders"]["type"] == "view"
    assert ns["shop.big_orders"]["documents"] == 0
    assert ns["shop.metrics"]["type"] == "timeseries"
    assert ns["shop.metrics"]["documents"] == 4
    assert ns["shop.metrics"]["data_namespace"] == "shop.system.buckets.metrics"
    assert ns["oplog"]["documents"] == 5
    assert result.facts["oplog"] == {
        "entries": 5,
        "first_ts": {"t": 1700000000, "i": 1},
        "last_ts": {"t": 1700000004, "i": 1},
    }
    assert result.facts["concurrent_collections"] == 2
    assert result.stats["documents"] == 36 + 15 + 4 + 5
    # Empty namespaces get an empty segment before their EOF block, as mongodump writes them.
    assert header("shop", "big_orders") + TERMINATOR + header("shop", "big_orders", True) in data
    for chunk in (1, 5, 4096):
        assert check(data, chunk).to_dict() == result.to_dict()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12), corrupt=st.booleans())
def test_any_chunk_boundaries_give_the_same_result(cuts: list[int], corrupt: bool) -> None:
    data, _ = build_archive()
    if corrupt:
        pos, size = body_documents(data)[20]
        data = flip(data, pos + size // 2)
    checker = MongoArchiveChecker()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        checker.feed(data[a:b])
    assert checker.finish().to_dict() == check(data).to_dict()


def test_describe_handles_a_failed_result() -> None:
    lines = describe(check(b"junk"))
    assert lines and "?" in lines[0]


def test_reader_round_trip() -> None:
    data, expected = build_archive()
    stream = iter_archive(io.BytesIO(data))
    first = next(stream)
    assert isinstance(first, Prelude)
    assert first.server_version == "7.0.14"
    assert [(e.db, e.collection, e.type) for e in first.entries] == [
        ("shop", "orders", "collection"),
        ("shop", "users", "collection"),
        ("shop", "empty", "collection"),
        ("shop", "big_orders", "view"),
        ("shop", "metrics", "timeseries"),
        ("", "oplog", ""),
    ]
    assert first.entries[0].metadata["uuid"] == uuid.UUID(int=1).hex
    assert first.entries[1].metadata["options"] == {"validationLevel": "strict"}
    assert first.entries[5].metadata_json == ""
    got: dict[str, list[bytes]] = {}
    for item in stream:
        assert isinstance(item, tuple)
        namespace, raw = item
        got.setdefault(namespace.name, []).append(raw)
    assert got == expected


def test_reader_raises_on_corruption_and_truncation() -> None:
    data, _ = build_archive()
    pos, size = body_documents(data)[3]
    prelude_, docs = open_archive(io.BytesIO(flip(data, pos + size - 3)))
    assert prelude_.entries
    with pytest.raises(ArchiveError, match=r"CRC mismatch for namespace shop\.orders"):
        list(docs)
    for cut in range(0, len(data), 37):
        with pytest.raises(ArchiveError):
            _, docs = open_archive(io.BytesIO(data[:cut]))
            list(docs)
    with pytest.raises(ArchiveError, match="metadata"):
        open_archive(io.BytesIO(fixture("bad-format")))


def test_reader_reads_real_mongodump_archive() -> None:
    prelude_, docs = open_archive(io.BytesIO(fixture("dump-w-oplog")))
    counts: dict[str, int] = {}
    for namespace, raw in docs:
        counts[namespace.name] = counts.get(namespace.name, 0) + 1
        assert bson.decode(raw)
    assert counts == {"test.foo": 25, "admin.system.version": 1, "oplog": 18}
    assert [e.namespace for e in prelude_.entries][1] == Namespace("", "oplog")


@pytest.mark.parametrize("name", ["test.bar", "dump-w-oplog"])
def test_writer_reproduces_mongodump_bytes(name: str) -> None:
    """Replaying a real archive through the writer gives the same header and body bytes."""
    data = fixture(name)
    prelude_, docs = open_archive(io.BytesIO(data))
    out = io.BytesIO()
    writer = ArchiveWriter(out, prelude_.server_version, prelude_.tool_version, prelude_.concurrent_collections)
    head_len = out.tell()
    for entry in prelude_.entries:
        writer.add_namespace(entry.db, entry.collection, entry.metadata, entry.type)
    prelude_end = out.tell()
    writer.begin_body()
    groups: list[tuple[Namespace, list[bytes]]] = []
    for namespace, raw in docs:  # each namespace of these fixtures is one segment, then its EOF block
        if not groups or groups[-1][0] != namespace:
            groups.append((namespace, []))
        groups[-1][1].append(raw)
    for namespace, raws in groups:
        writer.write_documents(namespace.db, namespace.collection, raws)
        writer.close_namespace(namespace.db, namespace.collection)
    writer.close()
    written = out.getvalue()
    assert written[:head_len] == data[:head_len]
    body_start = data.index(TERMINATOR) + 4
    assert written[prelude_end + 4 :] == data[body_start:]


def test_metadata_json_matches_mongodump_shape() -> None:
    text = metadata_json(
        "coll1",
        {"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}], "options": {}, "uuid": "FFA7" * 8},
        "collection",
    )
    assert text == (
        '{"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],'
        '"uuid":"' + "ffa7" * 8 + '","collectionName":"coll1","type":"collection"}'
    )
    parsed: dict[str, Any] = loads(text)
    assert parsed["collectionName"] == "coll1"
    with_options = metadata_json("c", {"options": {"capped": True}}, "")
    assert with_options == '{"options":{"capped":true},"indexes":[],"collectionName":"c"}'


def test_writer_rejects_misuse() -> None:
    writer = ArchiveWriter(io.BytesIO(), "7.0.0", "t")
    writer.add_namespace("a", "b", {})
    with pytest.raises(ValueError, match="begin_body"):
        writer.write_documents("a", "b", [doc(1)])
    writer.begin_body()
    with pytest.raises(ValueError, match=r"after begin_body\(\)"):
        writer.add_namespace("a", "c", {})
    with pytest.raises(ValueError, match="not in the prelude"):
        writer.write_documents("a", "zz", [doc(1)])
    with pytest.raises(ValueError, match="not a complete BSON document"):
        writer.write_documents("a", "b", [doc(1)[:-1]])
    with pytest.raises(ValueError, match="never closed"):
        writer.close()
    writer.close_namespace("a", "b")
    with pytest.raises(ValueError, match="already closed"):
        writer.write_documents("a", "b", [doc(1)])
    writer.close()
