"""`PgPlainChecker`: a ``pg_dump --format=plain`` SQL script, checked and counted in one pass.

What is checked: the header comment, the completion comment (followed by nothing but comments and the
``\\unrestrict`` line that 15.14+ writes) and the rows of each ``COPY ... FROM stdin;`` block up to its
``\\.`` line. COPY text escapes newlines and backslashes inside values, so a row is a line and ``\\.``
alone on a line can only be the terminator. The ``-- Name:`` comments repeat the custom format's TOC
tags, so both formats of one database give the same stats (docs/formats-pgdump.md).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ..base import CheckResult, FormatChecker
from .common import LISTED, SETVAL, entry_name

PLAIN_HEADER = (b"--", b"-- PostgreSQL database dump", b"--")
_PLAIN_STARTS = (b"--\n-- PostgreSQL database dump\n--\n", b"--\r\n-- PostgreSQL database dump\r\n--\r\n")
_COMPLETE = b"-- PostgreSQL database dump complete"
_ENTRY_COMMENT = re.compile(
    rb"-- (Data for )?Name: (.*?); Type: (.*?); Schema: (.*?); Owner: (.*?)(?:; Tablespace: .*)?"
)
_DUMPED = re.compile(rb"-- Dumped (from database|by pg_dump) version (.+)")
_RESTRICT = re.compile(rb"\\(restrict|unrestrict) (\S+)\s*")
_LO_OPEN = b"SELECT pg_catalog.lo_open("
LINE_CAP = 1 << 20  # a longer line (an INSERT, a function body) is only looked at this far


def sniff_plain(head: bytes) -> bool:
    """True when `head` starts with pg_dump's plain-format header comment."""
    return head.startswith(_PLAIN_STARTS)


class PgPlainChecker(FormatChecker):
    """Checks a ``pg_dump --format=plain`` script: header, completion comment, \\restrict keys, rows.

    pg_dump heads every TOC entry with a ``-- Name: tag; Type: desc; Schema: ns; Owner: o`` comment
    (``-- Data for Name:`` for data), so the script yields the same stats as the custom format:
    {"tables", "rows", "large_objects", "objects", the name lists, "sequence_values"}; a COPY is only
    taken as table data right after a TABLE DATA comment, never from inside a function body. facts:
    server_version, pg_dump_version, database (with --create), restrict (15.14+ wraps the script in
    ``\\restrict KEY`` ... ``\\unrestrict KEY``, and the two keys must match).

    Statements are read line by line (a partial line waits, capped at LINE_CAP); COPY data is not: it
    is scanned for its ``\\.`` line with bytes.find and counted with bytes.count, so memory is constant.
    """

    format = "pg-plain"

    def __init__(self) -> None:
        self._error: str | None = None
        self._result: CheckResult | None = None
        self._warnings: list[str] = []
        self._facts: dict[str, Any] = {}
        self._bytes = 0
        self._line = bytearray()  # a partial line, capped at LINE_CAP
        self._lineno = 0
        self._eol = b"\n"
        # the TOC entry whose statements are being read, from its comment
        self._desc = ""
        self._entry_name = ""
        self._first_statement = False
        # COPY data
        self._copy: str | None = None
        self._copy_line = 0
        self._copy_rows = 0
        self._copy_prev = b""  # the last bytes of "\n" + the COPY data: a terminator may straddle chunks
        # the end of the script
        self._after_complete = False  # the completion comment and only comments since
        self._restrict: bytes | None = None
        self._restrict_line = 0
        self._unrestricted = False
        # findings
        self._tables: dict[str, int] = {}
        self._uncounted: list[str] = []
        self._large_objects = 0
        self._objects: Counter[str] = Counter()
        self._names: dict[str, list[str]] = {key: [] for key in LISTED.values()}
        self._sequence_values: dict[str, int] = {}

    def feed(self, data: bytes) -> None:
        if self._error is not None or self._result is not None or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._bytes += len(data)
        pos, end = 0, len(data)
        while pos < end and self._error is None:
            if self._copy is not None:
                pos = self._copy_data(data, pos, end)
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._keep(data, pos, end)
                return
            if self._line:
                self._keep(data, pos, nl)
                line = bytes(self._line)
                self._line.clear()
            else:
                line = data[pos : min(nl, pos + LINE_CAP)]
            pos = nl + 1
            self._on_line(line)

    def finish(self) -> CheckResult:
        if self._result is None:
            self._result = self._build()
        return self._result

    def _build(self) -> CheckResult:
        if self._line and self._error is None:  # the last line has no newline
            line = bytes(self._line)
            self._line.clear()
            self._on_line(line)
        errors: list[str] = []
        if self._error is not None:
            errors.append(self._error)
        elif self._bytes == 0:
            errors.append("empty stream: no pg_dump header")
        elif self._lineno < len(PLAIN_HEADER):
            errors.append("truncated: the stream ends inside the pg_dump header comment")
        elif self._copy is not None:
            errors.append(
                f"truncated: the stream ends inside the COPY data of {self._copy} (line {self._copy_line}, no \\. line)"
            )
        elif not self._after_complete:
            errors.append("no '-- PostgreSQL database dump complete' comment at the end: dump truncated or failed")
        elif self._restrict is not None and not self._unrestricted:
            errors.append(
                f"\\restrict at line {self._restrict_line} has no \\unrestrict after the completion comment: "
                "dump truncated"
            )
        tables = dict(sorted(self._tables.items()))
        stats: dict[str, Any] = {
            "tables": tables,
            "rows": sum(tables.values()),
            "large_objects": self._large_objects,
            "objects": dict(sorted(self._objects.items())),
        }
        if self._uncounted:
            stats["uncounted_tables"] = sorted(self._uncounted)
        stats.update({key: sorted(names) for key, names in self._names.items()})
        stats["sequence_values"] = dict(sorted(self._sequence_values.items()))
        return CheckResult(
            format=self.format,
            ok=not errors,
            errors=errors,
            warnings=list(self._warnings),
            stats=stats,
            facts=dict(self._facts),
        )

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def _keep(self, data: bytes, start: int, stop: int) -> None:
        room = LINE_CAP - len(self._line)
        if room > 0:
            self._line += data[start : min(stop, start + room)]

    # -- statements --------------------------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        self._lineno += 1
        if line.endswith(b"\r"):
            line = line[:-1]
            if self._lineno == 1:
                self._eol = b"\r\n"
        if self._lineno <= len(PLAIN_HEADER):
            if line != PLAIN_HEADER[self._lineno - 1]:
                shown = line[:60].decode("utf-8", "replace")
                self._fail(f"line {self._lineno}: not a pg_dump plain-format header: {shown!r}")
            return
        if not line:
            return
        if line.startswith(b"--"):
            self._comment(line)
        elif line.startswith(b"\\") and (m := _RESTRICT.fullmatch(line)):
            self._meta(m.group(1), m.group(2))
        else:
            self._statement(line)

    def _comment(self, line: bytes) -> None:
        if line == _COMPLETE:
            self._after_complete = True
        elif m := _ENTRY_COMMENT.fullmatch(line):
            tag, desc, schema = (g.decode("utf-8", "replace") for g in m.group(2, 3, 4))
            self._desc, self._entry_name = desc, entry_name(None if schema == "-" else schema, tag)
            self._first_statement = True
            self._objects[desc] += 1
            if desc in LISTED:
                self._names[LISTED[desc]].append(self._entry_name)
            elif desc == "DATABASE":
                self._facts["database"] = tag
        elif m := _DUMPED.fullmatch(line):
            fact = "server_version" if m.group(1) == b"from database" else "pg_dump_version"
            self._facts[fact] = m.group(2).decode("utf-8", "replace").strip()

    def _meta(self, command: bytes, key: bytes) -> None:
        """``\\restrict KEY`` opens the script (15.14+), ``\\unrestrict KEY`` follows its completion comment."""
        if command == b"restrict":
            if self._restrict is not None:
                self._fail(f"line {self._lineno}: a second \\restrict (the first is at line {self._restrict_line})")
            self._restrict, self._restrict_line = key, self._lineno
            self._facts["restrict"] = True
        elif self._restrict is None:
            self._fail(f"line {self._lineno}: \\unrestrict without a \\restrict")
        elif key != self._restrict:
            self._fail(
                f"line {self._lineno}: \\unrestrict key differs from that of \\restrict (line {self._restrict_line})"
            )
        elif not self._after_complete:
            self._fail(f"line {self._lineno}: \\unrestrict before the '-- PostgreSQL database dump complete' comment")
        else:
            self._unrestricted = True

    def _statement(self, line: bytes) -> None:
        if self._unrestricted:
            self._fail(f"line {self._lineno}: a statement after \\unrestrict")
            return
        self._after_complete = False  # that comment was inside a string, not the end
        first, self._first_statement = self._first_statement, False
        desc = self._desc
        if desc == "TABLE DATA" and first:
            if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
                self._copy, self._copy_line, self._copy_rows = self._entry_name, self._lineno, 0
                self._copy_prev = b"\n"
                self._tables.setdefault(self._entry_name, 0)
            else:  # --inserts: INSERT statements, not counted
                self._uncounted.append(self._entry_name)
        elif desc == "SEQUENCE SET" and (m := SETVAL.search(line.decode("utf-8", "replace"))):
            self._sequence_values[self._entry_name] = int(m.group(1))
        elif desc == "BLOBS" and line.startswith(_LO_OPEN):
            self._large_objects += 1

    # -- COPY data ---------------------------------------------------------------------------------

    def _copy_data(self, data: bytes, pos: int, end: int) -> int:
        """Count the rows in data[pos:end] up to the ``\\.`` line; returns where statements resume."""
        table = self._copy
        assert table is not None
        term = b"\n\\." + self._eol
        keep = len(term) - 1
        prev = self._copy_prev
        j = (prev + data[pos : pos + keep]).find(term)  # a terminator begun in the previous chunk
        if j >= 0:
            stop = pos + j + len(term) - len(prev)
            rows = 0
        else:
            i = data.find(term, pos, end)
            if i < 0:
                self._copy_rows += data.count(b"\n", pos, end)
                self._copy_prev = (prev + data[max(pos, end - keep) : end])[-keep:]
                return end
            stop = i + len(term)
            rows = data.count(b"\n", pos, i + 1)
        rows += self._copy_rows
        self._tables[table] += rows
        self._lineno += rows + 1
        self._copy = None
        return stop
