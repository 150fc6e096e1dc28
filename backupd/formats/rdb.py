"""Streaming verifier for Redis / Valkey RDB snapshots (docs/formats.md).

Only the leading header (magic, AUX fields, functions, first SELECTDB/RESIZEDB) is parsed: it carries the
facts a manifest wants (server version, replication offset, key-count hint). Everything after it is just run
through CRC-64/Jones in whole chunks, which catches corruption and truncation at close to disk speed. Deep
value checks are `redis-check-rdb`'s job, not this module's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum, auto
from typing import Any

import anycrc

from backupd.formats.base import CheckResult, FormatChecker

HEADER_LEN = 9  # "REDIS" + 4 digits, or "VALKEY" + 3 digits
MAX_REDIS_VERSION = 13
VALKEY_VERSIONS = range(80, 82)  # Valkey 9.0 writes 80, 9.2 writes 81
TRAILER_LEN = 8
FIRST_VERSION_WITH_CRC = 5

# Header values above this size (lua bodies, function libraries) are skipped, not held in memory.
AUX_VALUE_CAP = 4096

# CRC-64/Jones exactly as Redis computes it: reflected, init 0, no final XOR.
CRC64_JONES = anycrc.CRC(width=64, poly=0xAD93D23594C935A9, init=0, refin=True, refout=True, xorout=0)

_MAGIC_RE = re.compile(rb"\A(?:REDIS[0-9]{4}|VALKEY[0-9]{3})")

OP_FUNCTION2 = 0xF5
OP_AUX = 0xFA
OP_RESIZEDB = 0xFB
OP_SELECTDB = 0xFE
OP_EOF = 0xFF
# No Redis or Valkey release uses these bytes as a type or opcode: seeing one in the header is corruption.
_NEVER_VALID = range(0x20, 0xF0)

# AUX fields written with rdbSaveAuxFieldStrInt: stored as text when they do not fit in 32 bits.
_NUMERIC_AUX = frozenset(
    {"redis-bits", "ctime", "used-mem", "repl-stream-db", "repl-offset", "aof-base", "aof-preamble"}
)
_CANONICAL_INT = re.compile(r"\A(?:0|-?[1-9][0-9]*)\Z")


def sniff(head: bytes) -> bool:
    """True if `head` starts like an RDB file (either vendor's magic); the version is judged later."""
    return _MAGIC_RE.match(head) is not None


def lzf_decompress(data: bytes, expected_len: int) -> bytes:
    """Decode liblzf's format; raises ValueError on malformed input.

    Only used for header values capped at AUX_VALUE_CAP, so a Python loop is cheap here and spares a
    dependency on a thinly maintained LZF binding.
    """
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            run = ctrl + 1
            if i + run > n:
                raise ValueError("literal run past end of input")
            out += data[i : i + run]
            i += run
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise ValueError("missing length byte")
            length += data[i]
            i += 1
        if i >= n:
            raise ValueError("missing offset byte")
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        if ref < 0:
            raise ValueError("back-reference before start of output")
        for k in range(length + 2):  # byte by byte: the reference may overlap what it produces
            out.append(out[ref + k])
        if len(out) > expected_len:
            break
    if len(out) != expected_len:
        raise ValueError(f"decoded {len(out)} bytes, expected {expected_len}")
    return bytes(out)


class _NeedMore(Exception):
    """The buffered bytes end inside the element being parsed."""


class _Bad(Exception):
    """The header is malformed; the message is the one-line error."""


class _Skipped:
    """A string too large to keep: its payload is streamed past, not decoded."""

    def __init__(self, size: int) -> None:
        self.size = size


class _Reader:
    """Cursor over the header buffer; raises _NeedMore instead of reading past the end."""

    def __init__(self, buf: bytearray, base: int) -> None:
        self.buf = buf
        self.base = base
        self.pos = 0

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedMore
        self.pos += 1
        return self.buf[self.pos - 1]

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _NeedMore
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def length(self) -> tuple[int, bool]:
        """An RDB length; the flag says the value is a special string encoding instead."""
        at = self.offset
        first = self.u8()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self.u8(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return int.from_bytes(self.take(4), "big"), False
        if first == 0x81:
            return int.from_bytes(self.take(8), "big"), False
        raise _Bad(f"bad length encoding 0x{first:02X} at offset {at}")

    def plain_length(self, what: str) -> int:
        at = self.offset
        value, encoded = self.length()
        if encoded:
            raise _Bad(f"{what} at offset {at}: string encoding where a length belongs")
        return value

    def string(self, what: str) -> bytes | int | _Skipped:
        at = self.offset
        value, encoded = self.length()
        if not encoded:
            return _Skipped(value) if value > AUX_VALUE_CAP else self.take(value)
        if value in (0, 1, 2):
            return int.from_bytes(self.take(1 << value), "little", signed=True)
        if value != 3:
            raise _Bad(f"{what} at offset {at}: unknown string encoding 0x{0xC0 | value:02X}")
        clen = self.plain_length(what)
        ulen = self.plain_length(what)
        if clen > AUX_VALUE_CAP or ulen > AUX_VALUE_CAP:
            return _Skipped(clen)
        try:
            return lzf_decompress(self.take(clen), ulen)
        except ValueError as exc:
            raise _Bad(f"{what} at offset {at}: bad LZF data ({exc})") from None


class _State(Enum):
    MAGIC = auto()
    OPCODE = auto()
    AUX_KEY = auto()
    AUX_VALUE = auto()
    FUNCTION = auto()
    SELECTDB = auto()
    RESIZEDB = auto()
    SKIP = auto()
    DONE = auto()


_WHAT = {
    _State.MAGIC: "the magic",
    _State.OPCODE: "an opcode",
    _State.AUX_KEY: "an AUX key",
    _State.AUX_VALUE: "an AUX value",
    _State.FUNCTION: "a function library",
    _State.SELECTDB: "SELECTDB",
    _State.RESIZEDB: "RESIZEDB",
}


class _HeaderParser:
    """Incremental parser for the leading part of an RDB; stops at the first key or unknown opcode.

    Holds at most one element (bounded by AUX_VALUE_CAP) plus the current chunk in memory.
    """

    def __init__(self) -> None:
        self.state = _State.MAGIC
        self.error: str | None = None
        self.magic = ""
        self.version = 0
        self.aux: dict[str, Any] = {}
        self.functions = 0
        self.lua_scripts = 0
        self.keys_hint: dict[int, int] = {}
        self.expires_hint: dict[int, int] = {}
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pending_key: str | None = None
        self._db = 0
        self._skip_left = 0
        self._skip_start = 0
        self._skip_what = ""
        self._after_skip = _State.OPCODE

    @property
    def done(self) -> bool:
        return self.state is _State.DONE

    def feed(self, data: bytes | memoryview) -> None:
        if self.done or self.error is not None:
            return
        self._buf += data
        while not self.done and self.error is None:
            if self.state is _State.SKIP:
                if not self._skip():
                    return
                continue
            reader = _Reader(self._buf, self._base)
            try:
                self._step(reader)
            except _NeedMore:
                return
            except _Bad as exc:
                self.error = str(exc)
                return
            del self._buf[: reader.pos]
            self._base += reader.pos
        self._buf = bytearray()  # finished: the rest of the stream only goes through the CRC

    def finish(self) -> None:
        if self.error is None and not self.done:
            if self.state is _State.MAGIC:
                total = self._base + len(self._buf)
                self.error = (
                    "empty input"
                    if total == 0
                    else f"truncated: {total} bytes, shorter than the {HEADER_LEN}-byte magic"
                )
            elif self.state is _State.SKIP:
                self.error = (
                    f"truncated: stream ended inside {self._skip_what} at offset {self._skip_start} "
                    f"({self._skip_left} bytes missing)"
                )
            else:
                self.error = f"truncated: stream ended inside {_WHAT[self.state]} at offset {self._base}"

    def _skip(self) -> bool:
        n = min(self._skip_left, len(self._buf))
        del self._buf[:n]
        self._base += n
        self._skip_left -= n
        if self._skip_left:
            return False
        self.state = self._after_skip
        return True

    def _string(self, reader: _Reader, then: _State) -> bytes | int | None:
        """Read a string; a too-large one is skipped (None) and parsing resumes at `then`."""
        at = reader.offset
        value = reader.string(_WHAT[self.state])
        if isinstance(value, _Skipped):
            self._skip_start, self._skip_what = at, _WHAT[self.state]
            self._skip_left = value.size
            self._after_skip = then
            self.state = _State.SKIP
            return None
        self.state = then
        return value

    def _step(self, r: _Reader) -> None:
        state = self.state
        if state is _State.MAGIC:
            self._magic(r.take(HEADER_LEN))
        elif state is _State.OPCODE:
            self._opcode(r)
        elif state is _State.AUX_KEY:
            key = self._string(r, _State.AUX_VALUE)
            self._pending_key = None if key is None else _text(key)
        elif state is _State.AUX_VALUE:
            at = r.offset
            value = self._string(r, _State.OPCODE)
            self._store_aux(self._pending_key, value, at)
        elif state is _State.FUNCTION:
            self._string(r, _State.OPCODE)
            self.functions += 1
        elif state is _State.SELECTDB:
            self._db = r.plain_length("SELECTDB db number")
            self.state = _State.RESIZEDB
        elif state is _State.RESIZEDB:
            if r.u8() == OP_RESIZEDB:
                self.keys_hint[self._db] = r.plain_length("RESIZEDB db_size")
                self.expires_hint[self._db] = r.plain_length("RESIZEDB expires_size")
            self.state = _State.DONE

    def _magic(self, head: bytes) -> None:
        if not sniff(head):
            raise _Bad(f"not an RDB file: bad magic {head!r} at offset 0")
        text = head.decode("ascii")
        self.magic, self.version = text, int(text[-4:] if text.startswith("REDIS") else text[-3:])
        if text.startswith("REDIS"):
            if not 1 <= self.version <= MAX_REDIS_VERSION:
                raise _Bad(
                    f"unsupported RDB version {self.version} ({text}): known up to {MAX_REDIS_VERSION}"
                )
        elif self.version not in VALKEY_VERSIONS:
            raise _Bad(f"unsupported Valkey RDB version {self.version} ({text})")
        self.state = _State.OPCODE

    def _opcode(self, r: _Reader) -> None:
        at = r.offset
        op = r.u8()
        if op == OP_AUX:
            self.state = _State.AUX_KEY
        elif op == OP_FUNCTION2:
            self.state = _State.FUNCTION
        elif op == OP_SELECTDB:
            self.state = _State.SELECTDB
        elif op in _NEVER_VALID:
            raise _Bad(f"unknown opcode 0x{op:02X} at offset {at}")
        else:  # EOF, a key's type byte, module AUX, slot info...: the header is over
            self.state = _State.DONE

    def _store_aux(self, key: str | None, value: bytes | int | None, at: int) -> None:
        if key is None:
            return
        if key == "lua":  # script bodies (Redis <= 6): count them, they are not facts
            self.lua_scripts += 1
            return
        if value is None:
            self.aux[key] = f"<skipped: larger than {AUX_VALUE_CAP} bytes at offset {at}>"
        elif isinstance(value, int):
            self.aux[key] = value
        else:
            text = _text(value)
            self.aux[key] = int(text) if key in _NUMERIC_AUX and _CANONICAL_INT.match(text) else text


def _text(value: bytes | int) -> str:
    return str(value) if isinstance(value, int) else value.decode("utf-8", "backslashreplace")


class RdbChecker(FormatChecker):
    """Checks magic, version, header and the EOF byte plus CRC-64 trailer of an RDB stream."""

    format = "redis-rdb"

    def __init__(self) -> None:
        self._header = _HeaderParser()
        self._crc = 0
        self._tail = b""  # the last <= 8 bytes seen: the trailer candidate, not yet in the CRC
        self._last_crc_byte = -1  # the byte just before the trailer: must be the EOF opcode
        self._total = 0
        self._result: CheckResult | None = None

    def feed(self, data: bytes) -> None:
        if self._result is not None or not data:
            return
        self._total += len(data)
        if self._header.error is not None:
            return
        view = memoryview(data)
        if not self._header.done:
            self._header.feed(view)
            if self._header.error is not None:
                return
        self._update_crc(view)

    def _update_crc(self, view: memoryview) -> None:
        """CRC everything except the last 8 bytes seen, in whole slices (C speed, no copies of the chunk)."""
        if len(view) >= TRAILER_LEN:
            if self._tail:
                self._crc = CRC64_JONES.calc(self._tail, self._crc)
                self._last_crc_byte = self._tail[-1]
            body = view[:-TRAILER_LEN]
            if len(body):
                self._crc = CRC64_JONES.calc(body, self._crc)
                self._last_crc_byte = body[-1]
            self._tail = bytes(view[-TRAILER_LEN:])
            return
        joined = self._tail + bytes(view)
        spill = len(joined) - TRAILER_LEN
        if spill > 0:
            self._crc = CRC64_JONES.calc(joined[:spill], self._crc)
            self._last_crc_byte = joined[spill - 1]
            joined = joined[spill:]
        self._tail = joined

    def finish(self) -> CheckResult:
        if self._result is None:
            self._result = self._build()
        return self._result

    def _build(self) -> CheckResult:
        header = self._header
        header.finish()
        result = CheckResult(format=self.format, ok=False)
        result.stats = {
            "rdb_version": header.version,
            "keys_hint": dict(header.keys_hint),
            "bytes": self._total,
        }
        if header.expires_hint:
            result.stats["expires_hint"] = dict(header.expires_hint)
        result.facts = dict(header.aux)
        if header.magic:
            result.facts["rdb_magic"] = header.magic
        if header.functions:
            result.facts["function_libraries"] = header.functions
        if header.lua_scripts:
            result.facts["lua_scripts"] = header.lua_scripts
        if header.error is not None:
            result.errors.append(header.error)
        elif header.version >= FIRST_VERSION_WITH_CRC:
            self._check_trailer(result)
        else:
            self._check_eof_only(result)
        result.ok = not result.errors
        return result

    def _check_trailer(self, result: CheckResult) -> None:
        eof_at = self._total - TRAILER_LEN - 1
        if self._total < HEADER_LEN + 1 + TRAILER_LEN:
            result.errors.append(f"truncated: {self._total} bytes, too short for EOF marker and checksum")
        elif self._last_crc_byte != OP_EOF:
            result.errors.append(
                f"truncated or corrupt: byte at offset {eof_at} is 0x{self._last_crc_byte:02X}, "
                "expected the EOF marker FF before the 8-byte checksum"
            )
        else:
            stored = int.from_bytes(self._tail, "little")
            if stored == 0:
                result.facts["checksum"] = "disabled"
                result.warnings.append("checksum disabled (stored 0): not verified")
            elif stored != self._crc:
                result.facts["checksum"] = "mismatch"
                result.errors.append(f"CRC mismatch: stored 0x{stored:016x}, computed 0x{self._crc:016x}")
            else:
                result.facts["checksum"] = "ok"

    def _check_eof_only(self, result: CheckResult) -> None:
        result.facts["checksum"] = "none"
        last = self._tail[-1] if self._tail else -1
        if self._total <= HEADER_LEN or last != OP_EOF:
            result.errors.append(
                f"truncated: last byte (offset {self._total - 1}) is not the EOF marker FF "
                f"(RDB version {self._header.version} has no checksum trailer)"
            )


def describe(result: CheckResult) -> list[str]:
    """Human lines for `backupd inspect`: what wrote the file, the key-count hint and the verdict."""
    stats, facts = result.stats, result.facts
    lines = [
        f"Redis RDB {facts.get('rdb_magic', '?')} (version {stats.get('rdb_version', '?')}), "
        f"{stats.get('bytes', 0)} bytes"
    ]
    made = [f"{k} {facts[k]}" for k in ("redis-ver", "valkey-ver", "redis-bits") if k in facts]
    if made:
        lines.append("written by " + ", ".join(made))
    if isinstance(facts.get("ctime"), int):
        lines.append(f"saved at {datetime.fromtimestamp(facts['ctime'], UTC):%Y-%m-%d %H:%M:%S} UTC")
    if "used-mem" in facts:
        lines.append(f"used memory when saved: {facts['used-mem']} bytes")
    if "repl-id" in facts:
        lines.append(f"replication: id {facts['repl-id']}, offset {facts.get('repl-offset', '?')}")
    keys: dict[int, int] = stats.get("keys_hint") or {}
    expires: dict[int, int] = stats.get("expires_hint") or {}
    for db, n in keys.items():
        lines.append(f"db{db}: {n} keys, {expires.get(db, 0)} with expiry (RESIZEDB hint; later dbs unread)")
    if not keys and result.ok:
        lines.append("no RESIZEDB hint in the header (empty dataset or old format)")
    lines.append(f"checksum: {facts.get('checksum', 'not reached')}")
    lines += [f"warning: {w}" for w in result.warnings]
    lines += [f"error: {e}" for e in result.errors]
    lines.append("verdict: OK" if result.ok else "verdict: FAILED")
    return lines
