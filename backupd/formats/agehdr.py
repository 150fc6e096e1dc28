"""The age v1 header (https://age-encryption.org/v1), read without any key: what `verify` can prove about an
encrypted artifact on a machine that holds only the recipients' public keys.

    age-encryption.org/v1
    -> X25519 <base64 ephemeral share>
    <base64 wrapped file key, lines of 64 columns, the last one shorter>
    -> <other stanza types (grease) ...>
    --- <base64 HMAC of the header>
    <payload: 16-byte nonce, then ChaCha20-Poly1305 chunks>

Pure: bytes in, a parsed header or a list of problems out. The MAC itself needs the file key (an identity).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

MAGIC = b"age-encryption.org/v1\n"
MAX_HEADER = 64 * 1024  # a header with a few recipients is a few hundred bytes
_ARG = re.compile(rb"^[\x21-\x7e]+$")
_B64 = re.compile(rb"^[A-Za-z0-9+/]*$")
NONCE_BYTES = 16
TAG_BYTES = 16


@dataclass
class Stanza:
    type: str
    args: list[str]
    body: bytes


@dataclass
class AgeHeader:
    stanzas: list[Stanza] = field(default_factory=list)
    mac: bytes = b""
    length: int = 0  # bytes of header, including the MAC line

    @property
    def x25519(self) -> int:
        """How many X25519 recipients the file was encrypted to."""
        return sum(1 for s in self.stanzas if s.type == "X25519")


class HeaderError(ValueError):
    pass


def is_age(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _b64(data: bytes, what: str) -> bytes:
    """Unpadded canonical base64, as age writes it."""
    if not _B64.match(data):
        raise HeaderError(f"{what}: not base64")
    try:
        out = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except binascii.Error as exc:
        raise HeaderError(f"{what}: {exc}") from None
    if base64.b64encode(out).rstrip(b"=") != data:
        raise HeaderError(f"{what}: not canonical base64")
    return out


def parse(data: bytes) -> AgeHeader:
    """Parse the header at the start of `data` (at least the whole header). Raises HeaderError."""
    if not data.startswith(MAGIC):
        raise HeaderError("not an age v1 file (no age-encryption.org/v1 line)")
    pos = len(MAGIC)
    header = AgeHeader()

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise HeaderError("header truncated" if len(data) < MAX_HEADER else "header too long")
        out = data[pos:end]
        pos = end + 1
        return out

    current = line()
    while True:
        if current.startswith(b"--- "):
            header.mac = _b64(current[4:], "header MAC")
            if len(header.mac) != 32:
                raise HeaderError("header MAC is not 32 bytes")
            header.length = pos
            break
        if not current.startswith(b"-> "):
            raise HeaderError(f"bad header line {current[:40]!r}")
        parts = current[3:].split(b" ")
        if not parts or not all(_ARG.match(p) for p in parts):
            raise HeaderError(f"bad stanza line {current[:40]!r}")
        body = b""
        while True:
            chunk = line()
            if len(chunk) > 64:
                raise HeaderError("stanza body line longer than 64 columns")
            body += chunk
            if len(chunk) < 64:
                break
        stanza = Stanza(parts[0].decode(), [p.decode() for p in parts[1:]], _b64(body, "stanza body"))
        if stanza.type == "X25519":
            if len(stanza.args) != 1 or len(_b64(stanza.args[0].encode(), "X25519 share")) != 32:
                raise HeaderError("X25519 stanza without a 32-byte share")
            if len(stanza.body) != 32:
                raise HeaderError("X25519 stanza body is not a 32-byte wrapped key")
        header.stanzas.append(stanza)
        current = line()
    if not header.stanzas:
        raise HeaderError("header has no recipient stanza")
    return header


def check(data: bytes, size: int, recipients: int | None = None) -> list[str]:
    """Problems with an encrypted file whose first bytes are `data` and whole size `size`: a bad header, a
    recipient count other than the manifest's, a payload too short to hold even the nonce and one chunk."""
    try:
        header = parse(data)
    except HeaderError as exc:
        return [f"age header: {exc}"]
    problems = []
    if recipients is not None and header.x25519 != recipients:
        problems.append(f"age header: {header.x25519} X25519 recipients, manifest says {recipients}")
    if size - header.length < NONCE_BYTES + TAG_BYTES:
        problems.append("age payload truncated")
    return problems
