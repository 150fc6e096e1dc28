"""RDB verifier: real upstream fixtures, a dump from a real redis-server, corrupted and synthetic files."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from backupd.formats.base import CheckResult
from backupd.formats.rdb import CRC64_JONES, RdbChecker, describe, lzf_decompress, sniff
from tests.conftest import feed_in_chunks, wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "redis-rdb"


def check(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(RdbChecker(), data, chunk)


def crc64_reference(data: bytes) -> int:
    """Bitwise CRC-64/Jones (reflected poly, init 0, no xorout): an oracle independent of anycrc."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x95AC9329AC4BC9B5 if crc & 1 else crc >> 1
    return crc


def rdb_string(value: bytes) -> bytes:
    n = len(value)
    if n < 64:
        return bytes([n]) + value
    if n < 16384:
        return bytes([0x40 | n >> 8, n & 0xFF]) + value
    return b"\x80" + n.to_bytes(4, "big") + value


def aux(key: bytes, encoded_value: bytes) -> bytes:
    return b"\xfa" + rdb_string(key) + encoded_value


def make_rdb(body: bytes, magic: bytes = b"REDIS0011") -> bytes:
    data = magic + body + b"\xff"
    return data + crc64_reference(data).to_bytes(8, "little")


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1 :]


# --- CRC ------------------------------------------------------------------------------------------


def test_crc64_jones_check_value() -> None:
    assert CRC64_JONES.calc(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64_reference(b"123456789") == 0xE9C6D914C4B8D9CA


def test_crc64_streams_across_chunks() -> None:
    data = random.Random(1).randbytes(10_000)
    running = 0
    for i in range(0, len(data), 777):
        running = CRC64_JONES.calc(data[i : i + 777], running)
    assert running == CRC64_JONES.calc(data) == crc64_reference(data)


# --- upstream fixtures ----------------------------------------------------------------------------

FIXTURE_EXPECT = {
    # file: (rdb_version, checksum fact, keys_hint, redis-ver)
    "hash-zipmap.rdb": (3, "none", {}, None),
    "corrupt_ziplist.rdb": (7, "disabled", {0: 54}, "999.999.999"),
    "list-quicklist.rdb": (8, "ok", {0: 2}, "4.0.9"),
    "hash-ziplist.rdb": (9, "ok", {0: 1}, "255.255.255"),
    "zset-ziplist.rdb": (10, "ok", {0: 1}, "255.255.255"),
    # Its CRC is right but its keys are empty: only redis-check-rdb's deep value check rejects it.
    "corrupt_empty_keys.rdb": (10, "ok", {0: 9}, "255.255.255"),
}


@pytest.mark.parametrize("name", sorted(FIXTURE_EXPECT))
def test_fixture(name: str) -> None:
    version, checksum, keys_hint, redis_ver = FIXTURE_EXPECT[name]
    data = (FIXTURES / name).read_bytes()
    result = check(data)
    assert result.ok, result.errors
    assert result.errors == []
    assert result.stats["rdb_version"] == version
    assert result.stats["keys_hint"] == keys_hint
    assert result.stats["bytes"] == len(data)
    assert result.facts["checksum"] == checksum
    assert result.facts.get("redis-ver") == redis_ver
    if checksum == "disabled":
        assert result.warnings == ["checksum disabled (stored 0): not verified"]
    else:
        assert result.warnings == []
    if version >= 5:  # int-encoded AUX values decode to ints
        assert result.facts["redis-bits"] == 64
        assert isinstance(result.facts["ctime"], int)


def test_fixture_set_is_complete() -> None:
    assert {p.name for p in FIXTURES.glob("*.rdb")} == set(FIXTURE_EXPECT)


@pytest.mark.parametrize("name", sorted(FIXTURE_EXPECT))
def test_chunking_does_not_change_the_result(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    whole = check(data)
    assert check(data, chunk=1) == whole
    assert check(data, chunk=7) == whole
    corrupt = check(flip(data, len(data) // 2))
    assert check(flip(data, len(data) // 2), chunk=1) == corrupt


# --- corruption and truncation --------------------------------------------------------------------

CRC_FIXTURES = ["list-quicklist.rdb", "hash-ziplist.rdb", "zset-ziplist.rdb", "corrupt_empty_keys.rdb"]


@pytest.mark.parametrize("name", CRC_FIXTURES)
def test_every_single_byte_flip_is_caught(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    missed = [off for off in range(len(data)) if check(flip(data, off)).ok]
    assert missed == []


def test_flipped_byte_in_the_middle_is_a_crc_mismatch() -> None:
    data = (FIXTURES / "hash-ziplist.rdb").read_bytes()
    result = check(flip(data, len(data) - 30))  # inside the ziplist value, past the header
    assert not result.ok
    assert result.facts["checksum"] == "mismatch"
    assert len(result.errors) == 1
    stored = int.from_bytes(data[-8:], "little")
    assert stored == crc64_reference(data[:-8])
    assert result.errors[0].startswith(f"CRC mismatch: stored 0x{stored:016x}, computed 0x")


def test_flipped_byte_in_the_trailer_is_a_crc_mismatch() -> None:
    data = (FIXTURES / "zset-ziplist.rdb").read_bytes()
    result = check(flip(data, len(data) - 3))
    assert not result.ok
    assert result.errors[0].startswith("CRC mismatch")
    assert result.errors[0].endswith(f"computed 0x{crc64_reference(data[:-8]):016x}")


def test_flipped_eof_marker_is_reported() -> None:
    data = (FIXTURES / "hash-ziplist.rdb").read_bytes()
    result = check(flip(data, len(data) - 9))
    assert result.errors == [
        f"truncated or corrupt: byte at offset {len(data) - 9} is 0xA5, "
        "expected the EOF marker FF before the 8-byte checksum"
    ]


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (5, "truncated: 5 bytes, shorter than the 9-byte magic"),
        (9, "truncated: stream ended inside an opcode at offset 9"),
        (20, "truncated: stream ended inside an AUX value at offset 20"),
        (0x5C, "truncated: stream ended inside RESIZEDB at offset 91"),
        (100, "truncated or corrupt: byte at offset 91 is 0xFB"),
        (-9, "truncated or corrupt: byte at offset 119 is 0x04"),  # just before FF
        (-3, "truncated or corrupt: byte at offset 125 is 0x76"),  # inside the trailer
    ],
)
def test_truncation(cut: int, message: str) -> None:
    data = (FIXTURES / "hash-ziplist.rdb").read_bytes()[:cut]
    result = check(data)
    assert not result.ok
    assert len(result.errors) == 1
    assert result.errors[0].startswith(message)
    assert check(data, chunk=1) == result


def test_truncation_just_before_the_eof_marker_of_another_dump() -> None:
    data = (FIXTURES / "corrupt_empty_keys.rdb").read_bytes()
    assert check(data[:-9]).errors == [
        "truncated or corrupt: byte at offset 262 is 0x00, "
        "expected the EOF marker FF before the 8-byte checksum"
    ]


def test_truncated_v3_file_without_trailer() -> None:
    data = (FIXTURES / "hash-zipmap.rdb").read_bytes()
    assert check(data).ok
    # Without a trailer, a cut that happens to end on an FF (here the zipmap's own end byte) is not
    # detectable by a cheap check: only redis-check-rdb's full parse would notice.
    assert data[-2:] == b"\xff\xff"
    assert check(data[:-1]).ok
    result = check(data[:-2])
    assert not result.ok
    assert result.errors == [
        f"truncated: last byte (offset {len(data) - 3}) is not the EOF marker FF "
        "(RDB version 3 has no checksum trailer)"
    ]


def test_garbage_and_empty_input() -> None:
    assert check(b"").errors == ["empty input"]
    assert check(b"").stats["bytes"] == 0
    result = check(b"PK\x03\x04 this is a zip file, not a dump" * 10)
    assert not result.ok
    assert result.errors == ["not an RDB file: bad magic b'PK\\x03\\x04 this' at offset 0"]
    assert not check(random.Random(7).randbytes(4096)).ok


def test_error_stops_the_work_but_counts_bytes() -> None:
    checker = RdbChecker()
    checker.feed(b"GARBAGE!!")
    checker.feed(b"\xff" * 100)
    result = checker.finish()
    assert result.errors == ["not an RDB file: bad magic b'GARBAGE!!' at offset 0"]
    assert result.stats["bytes"] == 109
    assert checker.finish() is result


@pytest.mark.parametrize(
    ("magic", "error"),
    [
        (b"REDIS0014", "unsupported RDB version 14 (REDIS0014): known up to 13"),
        (b"REDIS0000", "unsupported RDB version 0 (REDIS0000): known up to 13"),
        (b"REDIS0080", "unsupported RDB version 80 (REDIS0080): known up to 13"),
        (b"REDIS00x1", "not an RDB file: bad magic b'REDIS00x1' at offset 0"),
        (b"VALKEY011", "unsupported Valkey RDB version 11 (VALKEY011)"),
        (b"VALKEY099", "unsupported Valkey RDB version 99 (VALKEY099)"),
        (b"VALKEY08a", "not an RDB file: bad magic b'VALKEY08a' at offset 0"),
    ],
)
def test_rejected_versions(magic: bytes, error: str) -> None:
    assert check(make_rdb(b"", magic)).errors == [error]


@pytest.mark.parametrize("magic", [b"REDIS0001", b"REDIS0011", b"REDIS0012", b"REDIS0013", b"VALKEY080"])
def test_accepted_versions(magic: bytes) -> None:
    data = make_rdb(aux(b"redis-ver", rdb_string(b"9.0.0")), magic)
    result = check(data)
    if magic < b"REDIS0005" and magic.startswith(b"REDIS"):  # no trailer: the file ends at FF
        result = check(data[:-8])
    assert result.ok, result.errors
    assert result.facts["rdb_magic"] == magic.decode()
    assert result.facts["redis-ver"] == "9.0.0"


def test_sniff() -> None:
    assert sniff(b"REDIS0011\xfa")
    assert sniff(b"VALKEY080")
    assert sniff(b"REDIS0099")  # sniffing identifies; the checker judges the version
    assert not sniff(b"REDIS001")
    assert not sniff(b"REDIS00x1")
    assert not sniff(b"redis0011")
    assert not sniff(b"")


# --- header decoding ------------------------------------------------------------------------------

LZF_ABC = b"\x02abc\xe0\x00\x02"  # literal "abc", then a 9-byte back-reference at distance 3


def test_lzf_decompress() -> None:
    assert lzf_decompress(LZF_ABC, 12) == b"abc" * 4
    with pytest.raises(ValueError, match="expected 11"):
        lzf_decompress(LZF_ABC, 11)
    with pytest.raises(ValueError, match="before start"):
        lzf_decompress(b"\x20\x05", 3)
    with pytest.raises(ValueError, match="past end"):
        lzf_decompress(b"\x05ab", 6)


def synthetic_header() -> bytes:
    big = b"x" * 5000
    return (
        aux(b"redis-ver", rdb_string(b"7.2.4"))
        + aux(b"redis-bits", b"\xc0\x40")  # int8
        + aux(b"ctime", b"\xc2" + (1_700_000_000).to_bytes(4, "little"))  # int32
        + aux(b"used-mem", b"\xc1" + (-2).to_bytes(2, "little", signed=True))  # int16
        + aux(b"repl-id", rdb_string(b"8" * 40))  # all digits, but repl-id stays text
        + aux(b"repl-offset", rdb_string(b"123456789012"))  # too big for int encoding: text
        + aux(b"lzf-field", b"\xc3" + bytes([len(LZF_ABC), 12]) + LZF_ABC)
        + aux(b"long-field", rdb_string(b"y" * 300))  # 14-bit length
        + aux(b"huge-field", rdb_string(big))  # over the cap: skipped, not decoded
        + aux(b"lua", rdb_string(b"return 1"))
        + b"\xf5"
        + rdb_string(b"#!lua name=lib\nredis.register_function('f', function() return 1 end)")
        + b"\xfe\x03"  # SELECTDB 3
        + b"\xfb\x43\xe8\x05"  # RESIZEDB 1000 keys, 5 expires
        + b"\x00\x01k\x01v"  # a string key: parsing stops here
    )


def test_synthetic_header_decodes_every_encoding() -> None:
    data = make_rdb(synthetic_header())
    result = check(data)
    assert result.ok, result.errors
    facts = result.facts
    assert facts["redis-ver"] == "7.2.4"
    assert facts["redis-bits"] == 64
    assert facts["ctime"] == 1_700_000_000
    assert facts["used-mem"] == -2
    assert facts["repl-id"] == "8" * 40
    assert facts["repl-offset"] == 123456789012
    assert facts["lzf-field"] == "abc" * 4
    assert facts["long-field"] == "y" * 300
    assert facts["huge-field"].startswith("<skipped: larger than 4096 bytes")
    assert "lua" not in facts
    assert facts["lua_scripts"] == 1
    assert facts["function_libraries"] == 1
    assert facts["checksum"] == "ok"
    assert result.stats["keys_hint"] == {3: 1000}
    assert result.stats["expires_hint"] == {3: 5}
    assert check(data, chunk=1) == result
    lines = describe(result)
    assert "written by redis-ver 7.2.4, redis-bits 64" in lines
    assert "saved at 2023-11-14 22:13:20 UTC" in lines
    assert f"replication: id {'8' * 40}, offset 123456789012" in lines
    assert lines[-1] == "verdict: OK"


def test_empty_dataset_has_no_keys_hint() -> None:
    result = check(make_rdb(aux(b"redis-ver", rdb_string(b"7.0.15"))))
    assert result.ok
    assert result.stats["keys_hint"] == {}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x77", "unknown opcode 0x77 at offset 9"),
        (b"\xfa\xc5", "an AUX key at offset 10: unknown string encoding 0xC5"),
        (
            b"\xfa\x01k\xc3\x03\x0c\x20\x05\x00",
            "an AUX value at offset 12: bad LZF data (back-reference before start of output)",
        ),
        (b"\xfa\x01k\x01v\xfe\x90", "bad length encoding 0x90 at offset 15"),
        (b"\xfe\xc0", "SELECTDB db number at offset 10: string encoding where a length belongs"),
    ],
)
def test_malformed_header(body: bytes, error: str) -> None:
    result = check(make_rdb(body))
    assert not result.ok
    assert len(result.errors) == 1
    assert result.errors[0].startswith(error)


def test_huge_claimed_length_is_truncation_not_memory() -> None:
    body = b"\xfa\x01k\x81" + (1 << 40).to_bytes(8, "big")  # a 1 TiB AUX value that is not there
    result = check(make_rdb(body))
    assert result.errors == [
        "truncated: stream ended inside an AUX value at offset 12 (1099511627767 bytes missing)"
    ]


def test_describe_failed_result() -> None:
    lines = describe(check(b"REDIS0011"))
    assert lines[-1] == "verdict: FAILED"
    assert "error: truncated: stream ended inside an opcode at offset 9" in lines


# --- a dump written by a real redis-server --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[redis.Redis, Path]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path), "--dbfilename", "dump.rdb", "--logfile", str(tmp_path / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

        def ready(proc: subprocess.Popen[bytes] = proc, client: redis.Redis = client) -> bool:
            if proc.poll() is not None:
                return True
            with contextlib.suppress(redis.ConnectionError):
                return bool(client.ping())
            return False

        try:
            wait_for(ready, 15, "redis-server did not answer PING")
            if proc.poll() is None:
                yield client, tmp_path / "dump.rdb"
                return
        finally:
            client.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    pytest.fail("redis-server failed to start three times: " + (tmp_path / "redis.log").read_text())


def test_dump_from_real_redis_server(redis_server: tuple[redis.Redis, Path]) -> None:
    client, dump = redis_server
    client.set("string", "hello")
    client.set("int", 12345)
    client.set("long", "abcdefgh" * 10_000)  # LZF-compressed by the server
    client.set("expiring", "soon", ex=3600)
    client.rpush("list", *[f"item{i}" for i in range(200)])
    client.sadd("set", "a", "b", "c")
    client.sadd("intset", 1, 2, 3)
    client.zadd("zset", {"one": 1.0, "two": 2.5})
    client.hset("hash", mapping={f"f{i}": "v" * i for i in range(100)})
    client.xadd("stream", {"field": "value"})
    client.xgroup_create("stream", "group", id="0")
    client.pfadd("hll", "x", "y")
    client.set("other-db", "x")
    client.move("other-db", 1)  # db 1 comes after db 0's RESIZEDB, so it is not in the hint
    library = "#!lua name=backupdtest\n" + "".join(
        f"redis.register_function('noop{i}', function() return {i} end)\n" for i in range(3)
    )
    client.function_load(library)
    dbsize = client.dbsize()
    client.save()

    data = dump.read_bytes()
    result = check(data, chunk=4096)
    assert result.ok, result.errors
    assert result.warnings == []
    assert result.facts["redis-ver"] == client.info("server")["redis_version"]
    assert result.facts["redis-bits"] == 64
    assert result.facts["checksum"] == "ok"
    assert result.facts["function_libraries"] == 1
    assert result.stats["keys_hint"] == {0: dbsize}
    assert result.stats["expires_hint"] == {0: 1}
    assert result.stats["bytes"] == len(data)
    assert result.stats["rdb_version"] >= 9
    assert check(data, chunk=1) == result

    assert check(flip(data, len(data) // 2)).errors[0].startswith("CRC mismatch")
    assert not check(data[: len(data) // 2]).ok
