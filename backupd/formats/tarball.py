"""Streaming check of tar archives (ustar, GNU, pax), and the same tree digest computed from a directory.

A files backup is `tar | zstd`; a drill extracts it and must be able to say "this tree is the one that
was archived". So the checker hashes every regular file's content as it streams past and reduces the
archive to `tree_sha256`, and `tree_digest(root)` computes the same value from a directory on disk.

The digest is SHA-256 over one line per entry, sorted by path::

    type path size sha256 linktarget

with type f (regular file), d, l (symlink) or o (fifo, device), paths relative to the root without
"./", quoted like a URL path (so a space or newline cannot forge a field), "-" for an empty field.
Modes, owners and times are left out: extraction does not keep them all. Every path of a hard-linked
file is an "f" line with that file's content, because which path tar stores as the file and which as
the link depends on traversal order; the link count is in stats["hardlinks"].

Memory is constant in the size of the files; the digest keeps one small record per entry (~200 bytes),
because it has to sort them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from .base import CheckResult, FormatChecker

BLOCK = 512
_ZERO = bytes(BLOCK)
_MAX_EXTENSION = 1 << 20  # a GNU long name or pax header bigger than this is not a real one
_MAX_UNSAFE = 100  # listed unsafe entries; the count goes on
_REGULAR = (b"0", b"\0", b"7")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, dirs, fifos: size is not data
_SAFE_CHARS = b"/!$&'()*+,;=:@~-._"

# A record per entry: (type, size, sha256 hex or "-", link target or b"")
_Record = tuple[str, int, str, bytes]


def _octal(field: bytes) -> int | None:
    """A numeric header field: octal digits (NUL/space padded) or GNU base-256 (high bit set)."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:  # negative, two's complement
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b" \0")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _cstr(field: bytes) -> bytes:
    nul = field.find(b"\0")
    return field if nul < 0 else field[:nul]


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[148:156])
    if stored is None:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block) - sum(b - 256 if b > 127 else b for b in block[148:156])
    return stored == signed + 8 * 0x20


def sniff(head: bytes) -> bool:
    """True when `head` starts with a tar header: ustar/GNU magic, or any header with a valid checksum."""
    if len(head) < BLOCK or head[:BLOCK] == _ZERO:
        return False
    return _checksum_ok(head[:BLOCK]) and (head[257:262] == b"ustar" or head[0] != 0)


def _normalize(path: bytes) -> bytes:
    """The member's path as extracted under the root: no "./", no leading "/" (tar strips it);
    b"" for the root itself."""
    path = path.lstrip(b"/")
    path = posixpath.normpath(path) if path else b"."
    return b"" if path == b"." else path


def _unsafe_reasons(name: bytes, kind: str, link: bytes) -> list[str]:
    shown = name.decode("utf-8", "replace")
    reasons = []
    if name.startswith(b"/"):
        reasons.append(f"absolute path: {shown}")
    if b".." in name.split(b"/"):
        reasons.append(f"'..' in path: {shown}")
    if kind == "l":
        target = posixpath.normpath(posixpath.join(posixpath.dirname(_normalize(name)), link))
        if link.startswith(b"/") or target == b".." or target.startswith(b"../"):
            reasons.append(f"symlink points outside the archive: {shown} -> {link.decode('utf-8', 'replace')}")
    elif kind == "h" and (link.startswith(b"/") or b".." in link.split(b"/")):
        reasons.append(f"hard link points outside the archive: {shown} -> {link.decode('utf-8', 'replace')}")
    return reasons


class ExtractRule:
    """Which members a restore refuses: the one rule the check at backup time and restore both apply, so a
    backup marked verified is one restore accepts (docs/formats.md).

    Symlinks are data and are restored verbatim, whatever they point at. What is refused is a write that
    would land outside the target: an absolute name or one with '..', a hard link to such a path, and a
    member whose path goes through a symlink an earlier member created. Devices, fifos and sockets are
    refused too (the files source excludes them at dump time and lists them in the manifest).
    """

    def __init__(self) -> None:
        self.symlinks: set[bytes] = set()

    def problem(self, name: bytes, kind: str, link: bytes = b"") -> str | None:
        shown = name.decode("utf-8", "replace")
        if name.startswith(b"/"):
            return f"absolute path: {shown}"
        if b".." in name.split(b"/"):
            return f"'..' in path: {shown}"
        if kind == "o":
            return f"device, fifo or socket: {shown}"
        path = _normalize(name)
        if kind == "h":
            if link.startswith(b"/") or b".." in link.split(b"/"):
                return f"hard link points outside the archive: {shown} -> {link.decode('utf-8', 'replace')}"
            through = self._through_symlink(_normalize(link) + b"/x")
            if through is not None:
                return f"hard link goes through the symlink {through}: {shown}"
        through = self._through_symlink(path)
        if through is not None:
            return f"path goes through the symlink {through}: {shown}"
        if kind == "l":
            self.symlinks.add(path)
        return None

    def _through_symlink(self, path: bytes) -> str | None:
        while b"/" in path:
            path = path.rsplit(b"/", 1)[0]
            if path in self.symlinks:
                return path.decode("utf-8", "replace")
        return None


def links_outside(name: bytes, link: bytes) -> bool:
    """A symlink whose target is absolute or climbs out of the tree: its content is not in the backup."""
    target = posixpath.normpath(posixpath.join(posixpath.dirname(_normalize(name)), link))
    return link.startswith(b"/") or target == b".." or target.startswith(b"../")


def _digest_lines(records: dict[bytes, _Record]) -> str:
    digest = hashlib.sha256()
    for path in sorted(records):
        kind, size, sha, link = records[path]
        fields = [
            kind.encode(),
            quote_from_bytes(path, _SAFE_CHARS).encode(),
            str(size).encode(),
            sha.encode(),
            quote_from_bytes(link, _SAFE_CHARS).encode() if link else b"-",
        ]
        digest.update(b" ".join(fields) + b"\n")
    return digest.hexdigest()


class _Tally:
    """Counts and unsafe entries, shared by the archive checker and the directory walk."""

    def __init__(self) -> None:
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "other": 0, "bytes": 0}
        self.records: dict[bytes, _Record] = {}
        self.unsafe: list[str] = []
        self.unsafe_count = 0

    def add(self, name: bytes, kind: str, size: int = 0, sha: str = "-", link: bytes = b"") -> None:
        for reason in _unsafe_reasons(name, kind, link):
            self.unsafe_count += 1
            if len(self.unsafe) < _MAX_UNSAFE:
                self.unsafe.append(reason)
        path = _normalize(name)
        if not path:
            return  # "./": the root, which the directory walk does not list either
        key = {"f": "files", "d": "dirs", "l": "symlinks", "h": "hardlinks"}.get(kind, "other")
        self.counts[key] += 1
        if kind == "f":
            self.counts["bytes"] += size
        self.records[path] = (kind, size, sha, link) if kind != "h" else self._link_record(link)

    def _link_record(self, link: bytes) -> _Record:
        target = self.records.get(_normalize(link))
        if target is None or target[0] != "f":
            return ("h", 0, "-", _normalize(link))  # a link to a missing file: keep it visible
        return target

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "tree_sha256": _digest_lines(self.records),
            "unsafe": list(self.unsafe),
            "unsafe_count": self.unsafe_count,
        }


class TarChecker(FormatChecker):
    """Walks 512-byte headers and data blocks, verifies header checksums, hashes file contents and
    requires the end-of-archive marker (two zero blocks), so a truncated tar fails."""

    format = "tar"

    def __init__(self) -> None:
        self._tally = _Tally()
        self._error: str | None = None
        self._warnings: list[str] = []
        self._offset = 0  # stream offset of the next byte to consume
        self._buf = bytearray()  # a header being collected, or a long name / pax header's data
        self._state = "header"  # header | data | extension | pad | end | done
        self._remaining = 0  # data bytes left in the current entry (or extension)
        self._pad = 0  # padding bytes left after it
        self._entry_offset = 0
        self._hasher: hashlib._Hash | None = None
        self._entry: tuple[bytes, str, int, bytes] | None = None  # name, kind, size, link
        self._extension_type = b""
        self._pending: dict[str, bytes] = {}  # from 'L', 'K', 'x' for the next entry
        self._global: dict[str, bytes] = {}  # from 'g'
        self._formats: set[str] = set()
        self._rule = ExtractRule()
        self._links_outside = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size and self._error is None:
            state = self._state
            if state == "data":
                n = min(self._remaining, size - pos)
                if self._hasher is not None:
                    self._hasher.update(view[pos : pos + n])
                self._remaining -= n
                pos += n
                if self._remaining == 0:
                    self._end_entry()
            elif state == "pad":
                n = min(self._pad, size - pos)
                self._pad -= n
                pos += n
                if self._pad == 0:
                    self._state = "header"
            elif state == "done":
                if view[pos:].tobytes().strip(b"\0"):
                    self._warn(f"data after the end-of-archive marker at offset {self._offset + pos}")
                    self._state = "trailing"
                pos = size
            elif state == "trailing":
                pos = size
            else:  # header, end or extension: collect a block (or the extension's data)
                want = (self._remaining if state == "extension" else BLOCK) - len(self._buf)
                n = min(want, size - pos)
                self._buf += view[pos : pos + n]
                pos += n
                if n == want:
                    block = bytes(self._buf)
                    self._buf.clear()
                    consumed = self._offset + pos - len(block)
                    if state == "extension":
                        self._end_extension(block)
                    else:
                        self._block(block, consumed)
        self._offset += size

    def finish(self) -> CheckResult:
        errors = [self._error] if self._error is not None else []
        if not errors and self._state not in ("done", "trailing"):
            errors.append(self._truncation())
        stats = self._tally.stats()
        warnings = self._warnings + stats["unsafe"]
        facts: dict[str, Any] = {"formats": sorted(self._formats), "links_outside": self._links_outside}
        return CheckResult(
            format=self.format, ok=not errors, errors=errors, warnings=warnings, stats=stats, facts=facts
        )

    def _truncation(self) -> str:
        if self._offset == 0:
            return "empty stream: not a tar archive"
        if self._state == "data" and self._entry is not None:
            name, _, size, _ = self._entry
            done = size - self._remaining
            return f"truncated inside {name.decode('utf-8', 'replace')!r} ({done} of {size} bytes)"
        if self._state == "end":
            return "only one end-of-archive zero block: archive truncated"
        if self._buf:
            return f"truncated header at offset {self._offset - len(self._buf)}"
        return "no end-of-archive marker (two zero blocks): archive truncated"

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def _warn(self, message: str) -> None:
        if len(self._warnings) < _MAX_UNSAFE:
            self._warnings.append(message)

    # -- headers ---------------------------------------------------------------------------------

    def _block(self, block: bytes, offset: int) -> None:
        if self._state == "end":
            if block == _ZERO:
                self._state = "done"
            else:
                self._fail(f"lone zero block at offset {offset - BLOCK} followed by a header")
            return
        if block == _ZERO:
            self._state = "end"
            return
        if not _checksum_ok(block):
            self._fail(f"header checksum mismatch at offset {offset}")
            return
        size = _octal(block[124:136])
        if size is None or size < 0:
            self._fail(f"bad size field in the header at offset {offset}")
            return
        kind = block[156:157]
        magic = block[257:265]
        if magic == b"ustar  \0":
            self._formats.add("gnu")
            name = _cstr(block[0:100])
        elif magic[:6] == b"ustar\0":
            self._formats.add("ustar")
            prefix = _cstr(block[345:500])
            name = prefix + b"/" + _cstr(block[0:100]) if prefix else _cstr(block[0:100])
        else:
            self._formats.add("v7")
            name = _cstr(block[0:100])
        link = _cstr(block[157:257])
        if kind in (b"L", b"K", b"x", b"g"):
            if size > _MAX_EXTENSION:
                self._fail(f"{kind.decode()} header of {size} bytes at offset {offset}: too big")
                return
            self._formats.add("pax" if kind in (b"x", b"g") else "gnu")
            self._extension_type = kind
            self._entry_offset = offset
            self._start_data(size, extension=True)
            return
        overrides = {**self._global, **self._pending}
        self._pending = {}
        name = overrides.get("path", name)
        link = overrides.get("linkpath", link)
        if "size" in overrides:
            pax_size = overrides["size"]
            if not pax_size.isdigit():
                self._fail(f"bad pax size {pax_size!r} for the entry at offset {offset}")
                return
            size = int(pax_size)
        self._start_entry(name, kind, size, link, offset)

    def _start_entry(self, name: bytes, kind: bytes, size: int, link: bytes, offset: int) -> None:
        if kind in _REGULAR and name.endswith(b"/"):  # old tars mark directories by the slash only
            kind = b"5"
        letter = {b"1": "h", b"2": "l", b"5": "d"}.get(kind, "f" if kind in _REGULAR else "o")
        if kind == b"S":
            letter = "f"
            self._warn(f"sparse file {name.decode('utf-8', 'replace')!r}: its stored data is hashed")
        elif kind == b"M":
            self._fail(f"multi-volume continuation entry at offset {offset}: not supported")
            return
        elif kind == b"V":  # GNU volume label: not a member
            self._start_data(0)
            return
        elif letter == "o" and kind not in _NO_DATA:
            self._warn(f"unknown entry type {kind!r} at offset {offset}: counted as other")
        refused = self._rule.problem(name, letter, link)
        if refused is not None:
            self._fail(f"{refused}: restore would refuse this member")
            return
        if letter == "l" and links_outside(name, link):
            self._links_outside += 1
        self._entry = (name, letter, size, link)
        self._entry_offset = offset
        self._hasher = hashlib.sha256() if letter == "f" else None
        self._start_data(0 if kind in _NO_DATA else size)

    def _start_data(self, size: int, *, extension: bool = False) -> None:
        self._pad = -size % BLOCK
        self._remaining = size
        if extension and size:
            self._state = "extension"
        elif extension:
            self._end_extension(b"")
        elif size:
            self._state = "data"
        elif self._entry is not None:
            self._end_entry()

    def _end_entry(self) -> None:
        assert self._entry is not None
        name, letter, size, link = self._entry
        if letter == "f" and self._hasher is not None:
            self._tally.add(name, "f", size, self._hasher.hexdigest())
        else:
            self._tally.add(name, letter, 0, "-", link)
        self._entry = None
        self._hasher = None
        self._state = "pad" if self._pad else "header"

    def _end_extension(self, data: bytes) -> None:
        kind = self._extension_type
        self._state = "pad" if self._pad else "header"
        if kind in (b"L", b"K"):
            self._pending["path" if kind == b"L" else "linkpath"] = _cstr(data)
            return
        records = _parse_pax(data)
        if records is None:
            self._fail(f"bad pax header at offset {self._entry_offset}")
            return
        wanted = {k: v for k, v in records.items() if k in ("path", "linkpath", "size")}
        (self._global if kind == b"g" else self._pending).update(wanted)


def _parse_pax(data: bytes) -> dict[str, bytes] | None:
    """pax records: "<length> <key>=<value>\\n", the length counting the whole record."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding some writers leave
            break
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            return None
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space or data[end - 1] != 0x0A:
            return None
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            return None
        records[key.decode("utf-8", "replace")] = value
        pos = end
    return records


def tree_digest(root: Path) -> dict[str, Any]:
    """The stats `TarChecker` gives for an archive of `root` (files, dirs, symlinks, hardlinks, bytes,
    tree_sha256, unsafe), computed from the directory itself without following symlinks."""
    tally = _Tally()
    inodes: dict[tuple[int, int], _Record] = {}  # hard-linked files: the record of the first path
    base = os.fsencode(root)

    def walk(directory: bytes, relative: bytes) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = relative + entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    tally.add(rel, "l", link=os.readlink(entry.path))
                elif stat.S_ISDIR(info.st_mode):
                    tally.add(rel, "d")
                    walk(entry.path, rel + b"/")
                elif stat.S_ISREG(info.st_mode):
                    inode = (info.st_dev, info.st_ino)
                    if inode in inodes:
                        tally.counts["hardlinks"] += 1  # same record as the first path, as in the archive
                        tally.records[rel] = inodes[inode]
                        continue
                    with open(entry.path, "rb") as f:
                        sha = hashlib.file_digest(f, "sha256").hexdigest()
                    tally.add(rel, "f", info.st_size, sha)
                    if info.st_nlink > 1:
                        inodes[inode] = tally.records[rel]
                elif not stat.S_ISSOCK(info.st_mode):  # GNU tar skips sockets ("socket ignored")
                    tally.add(rel, "o")

    walk(base, b"")
    return tally.stats()


def describe(result: CheckResult) -> list[str]:
    """Human-readable summary for `backupd inspect`."""
    s = result.stats
    formats = "/".join(result.facts.get("formats", [])) or "?"
    lines = [f"tar archive ({formats})", "status: OK" if result.ok else "status: FAILED"]
    lines += [f"error: {e}" for e in result.errors]
    lines += [f"warning: {w}" for w in result.warnings]
    if s:
        lines.append(
            f"{s['files']} files ({s['bytes']} bytes), {s['dirs']} directories, {s['symlinks']} symlinks, "
            f"{s['hardlinks']} hard links, {s['other']} other"
        )
        lines.append(f"tree sha256: {s['tree_sha256']}")
        if s["unsafe_count"]:
            lines.append(f"unsafe entries: {s['unsafe_count']}")
    return lines
