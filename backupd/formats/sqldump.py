"""Streaming check of mysqldump / mariadb-dump text: header, completion trailer and exact row counts.

The row counts are what a restore drill compares a restored database against, so they must be exact,
and they must be cheap: the checker runs beside the compressor while the dump tool and the server use
most of the CPU. Two facts about mysqldump's output make that possible (docs/formats.md):

* string literals never hold a raw newline (the client escapes it as ``\\n``, binaries too), so a raw
  ``\\n`` inside an INSERT is always outside a literal, and so is ``;\\n`` (the end of the statement);
* outside literals, an INSERT's values hold ``(`` only where a row starts.

mariadb-dump (MDEV-25152, as in 10.11) writes ``INSERT INTO `t` VALUES`` and then one row per line, so
an INSERT's rows are its lines, counted with ``bytes.count(b"\\n")``, plus the extra rows of the rare
lines that hold ``),(``, which take the exact path. MySQL's one-line statements always take it:
`rows_in_values` finds literal boundaries with bytes.translate/replace only (no per-literal Python or
regex step), twice as fast as a regex stripping literals. bench/bench_sqldump_count.py has the figures.

Assumes the default utf8mb4 connection charset: in a dump made with --default-character-set=sjis, gbk,
big5 or cp932 a byte 0x5C inside a multi-byte character is not an escape, and counts may be wrong.
"""

from __future__ import annotations

import re
from typing import Any

from .base import CheckResult, FormatChecker

_IDENT = rb'`(?:[^`]|``)+`|"(?:[^"]|"")+"|[\w$\x80-\xff]+'
_USER = rb"(?:" + _IDENT + rb"|'[^']*')(?:@(?:" + _IDENT + rb"|'[^']*'|[\w.%-]+))?"

# mysql_real_escape_string writes only these escapes: \0 \n \r \\ \' \" \Z. Keeping the escaped
# characters next to their backslash keeps every escape pair intact while the rest is dropped.
_DROP_ALL_BUT_ESCAPES = bytes(c for c in range(256) if c not in b"\\'(0nrZ\"")
_DROP_ALL_BUT_QUOTES_PARENS = bytes(c for c in range(256) if c not in b"'(")
_INSERT = re.compile(
    rb"(?:INSERT|REPLACE)(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE))*\s+INTO\s+(" + _IDENT + rb")"
    rb"(?:\s*\((?:" + _IDENT + rb"|[\s,])*\))?\s*VALUES ?",
    re.I,
)
_CREATE_TABLE = re.compile(rb"CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(" + _IDENT + rb")", re.I)
# The temporary stand-in for a view (a table before 5.x-era clients moved to a view stub), the stub
# itself, and the final definition: all name the view, never a table.
_VIEW = re.compile(rb"/\*!50001\s+(?:CREATE\s+(?:TABLE|VIEW)|VIEW)\s+(" + _IDENT + rb")", re.I)
_CREATE_OBJECT = re.compile(
    rb"(?:/\*!\d+\s*)?CREATE(?:\s*\*/)?\s+(?:OR\s+REPLACE\s+)?"
    rb"(?:/\*!\d+\s*)?(?:DEFINER\s*=\s*(?:CURRENT_USER(?:\(\))?|" + _USER + rb")\s*(?:\*/)?\s*)?"
    rb"(?:/\*!\d+\s*)?(?:AGGREGATE\s+)?(PROCEDURE|FUNCTION|TRIGGER|EVENT)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rb"(" + _IDENT + rb")(?:\s*\.\s*(" + _IDENT + rb"))?",
    re.I,
)
_HEADER = re.compile(rb"-- (MariaDB|MySQL) dump (\d[\w.]*)(?:\s+Distrib (\S+?),|-(\S+?),)\s*for (.*)", re.I)
_USE = re.compile(rb"USE\s+(" + _IDENT + rb")\s*;", re.I)
_HOST = re.compile(rb"-- Host: (.*?)\s+Database: ?(.*)")
_SERVER = re.compile(rb"-- Server version\s+(.*)")
# --master-data=2 --gtid (a PITR job's dumps): the snapshot's binlog coordinates, as comments
_MASTER_POS = re.compile(rb"-- CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+);")
_GTID_POS = re.compile(rb"-- SET GLOBAL gtid_slave_pos='([0-9,-]*)';")
_TRAILER = re.compile(rb"-- Dump completed(?: on \d{4}-\d\d-\d\d [ \d]\d:\d\d:\d\d)?")
_SANDBOX = (b"/*!999999\\- ", b"/*M!999999\\- ")
_DUMP_HEADS = (b"-- MariaDB dump", b"-- MySQL dump")
_TRAILER_MAX = 200  # a longer last line cannot be the trailer, so it is not kept


def sniff(head: bytes) -> bool:
    """True when `head` (the first bytes of a stream) starts like a mysqldump / mariadb-dump dump."""
    if head.startswith(_SANDBOX):
        nl = head.find(b"\n")
        if nl < 0:
            return True
        head = head[nl + 1 :]
    return head.startswith(_DUMP_HEADS)


def _unquote(ident: bytes) -> str:
    if ident[:1] == b"`":
        ident = ident[1:-1].replace(b"``", b"`")
    elif ident[:1] == b'"':
        ident = ident[1:-1].replace(b'""', b'"')
    return ident.decode("utf-8", "replace")


def rows_in_values(values: bytes) -> int:
    """Rows in the VALUES text of whole lines: the ``(`` outside string literals, exactly.

    1. drop every byte but backslashes, quotes, parens and escaped characters (C speed, ~5x shorter);
    2. delete escape pairs ``\\\\`` then ``\\'``: left to right that is how the escapes pair up, and
       every quote left is now a literal's boundary;
    3. keep only quotes and parens and delete adjacent quote pairs ``''``: that never changes the
       parity of the quotes before a paren, and leaves a quote only around literals holding ``(``;
    4. the parens at even positions between the remaining quotes are outside literals.
    """
    if b"'" not in values:
        return values.count(b"(")
    reduced = values.translate(None, _DROP_ALL_BUT_ESCAPES)
    if b"\\" in reduced:
        reduced = reduced.replace(b"\\\\", b"").replace(b"\\'", b"")
    reduced = reduced.translate(None, _DROP_ALL_BUT_QUOTES_PARENS).replace(b"''", b"")
    if b"'" not in reduced:
        return len(reduced)
    return sum(map(len, reduced.split(b"'")[::2]))


def _count_rows(block: bytes, start: int, end: int) -> int:
    """Rows in block[start:end]: whole lines of a multi-line INSERT's VALUES (`start` may be where the
    VALUES begin, mid-line).

    mariadb-dump writes each row on a line of its own, so every line is one row, except the empty
    rest of the ``VALUES`` line; a line holding ``),(`` may hold more rows (or hold it inside a
    literal), so only those lines are counted the slow, exact way.
    """
    rows = block.count(b"\n", start, end) - (block[start] == 10)
    q = block.find(b"),(", start, end)
    while q >= 0:
        ls = max(block.rfind(b"\n", start, q) + 1, start)
        le = block.find(b"\n", q, end)
        if le < 0:
            le = end
        rows += rows_in_values(block[ls:le]) - 1
        q = block.find(b"),(", le, end)
    return rows


class SqlDumpChecker(FormatChecker):
    """Checks a dump's header and trailer and counts tables, rows, views, routines, triggers, events.

    stats: {"tables": {name: rows}, "views": [...], "routines": {"procedures": [...], "functions":
    [...]}, "triggers": [...], "events": [...], "rows": total, "statements": INSERT statements}.
    Names are bare, as in a dump of one database; after a ``USE`` (--databases) they are "db.name".

    Works on whole lines: a partial last line waits in a buffer for the next chunk, so memory is
    bounded by the longest line (one extended INSERT, at most max_allowed_packet). The rest of a chunk
    is parsed in place, by offsets, because on this path a copy of each chunk costs as much as a scan.
    """

    format = "sql-dump"

    def __init__(self) -> None:
        self._partial = bytearray()
        self._error: str | None = None
        self._warnings: list[str] = []
        self._facts: dict[str, Any] = {}
        self._lines_seen = 0  # only counted up to the header
        self._in_preamble = True
        self._bytes = 0
        self._last_line = b""
        # Parser state between lines.
        self._delimiter = b";"
        self._database = ""  # from USE, in dumps of several databases
        self._in_statement = False  # inside a multi-line statement (not an INSERT)
        self._insert_table: str | None = None  # inside a multi-line INSERT of this table
        self._runs: dict[bytes, re.Pattern[bytes]] = {}
        # Findings.
        self._tables: dict[str, int] = {}
        self._views: set[str] = set()
        self._procedures: set[str] = set()
        self._functions: set[str] = set()
        self._triggers: set[str] = set()
        self._events: set[str] = set()
        self._statements = 0

    # -- stream handling ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._error is not None or not data:
            return
        self._bytes += len(data)
        start = 0
        if self._partial:  # complete the buffered line first
            nl = data.find(b"\n")
            if nl < 0:
                self._partial += data
                return
            start = nl + 1
            head = bytes(self._partial) + data[:start]
            self._partial.clear()
            self._parse(head, 0, len(head))
        stop = data.rfind(b"\n", start) + 1
        if stop > start:
            self._parse(data, start, stop)
        self._partial += data[max(start, stop) :]

    def finish(self) -> CheckResult:
        if self._partial:
            tail = bytes(self._partial) + b"\n"
            self._partial.clear()
            if self._error is None:
                self._parse(tail, 0, len(tail))
        errors: list[str] = []
        if self._error is not None:
            errors.append(self._error)
        elif self._bytes == 0:
            errors.append("empty stream: no dump header")
        elif not _TRAILER.fullmatch(self._last_line):
            errors.append("no '-- Dump completed' trailer: dump truncated or failed")
        elif self._insert_table is not None:
            errors.append(f"dump ends inside an INSERT into `{self._insert_table}`")
        elif self._delimiter != b";":
            errors.append("dump ends inside a DELIMITER block")
        return CheckResult(
            format=self.format,
            ok=not errors,
            errors=errors,
            warnings=list(self._warnings),
            stats=self._stats(),
            facts=dict(self._facts),
        )

    def _stats(self) -> dict[str, Any]:
        tables = {name: rows for name, rows in sorted(self._tables.items()) if name not in self._views}
        return {
            "tables": tables,
            "views": sorted(self._views),
            "routines": {"procedures": sorted(self._procedures), "functions": sorted(self._functions)},
            "triggers": sorted(self._triggers),
            "events": sorted(self._events),
            "rows": sum(tables.values()),
            "statements": self._statements,
        }

    def _note_last_line(self, block: bytes, start: int, stop: int) -> None:
        """Remember the last non-empty line of block[start:stop], if short enough to be the trailer."""
        end = stop
        while end > start and block[end - 1] in b" \t\r\n":
            end -= 1
        if end == start:
            return
        begin = max(block.rfind(b"\n", start, end) + 1, start)
        self._last_line = block[begin:end] if end - begin <= _TRAILER_MAX else b"<long line>"

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    # -- parsing -----------------------------------------------------------------------------------

    def _parse(self, block: bytes, pos: int, stop: int) -> None:
        """Walk the whole lines of block[pos:stop]; INSERT values are handled without a line loop."""
        self._note_last_line(block, pos, stop)
        while pos < stop and self._error is None:
            if self._insert_table is not None:
                pos = self._continue_insert(block, pos, stop)
                continue
            if (
                self._delimiter == b";"
                and not self._in_statement
                and block[pos] in b"IR"
                and (m := _INSERT.match(block, pos, stop))
            ):
                pos = self._start_insert(block, pos, stop, m)
                continue
            le = block.find(b"\n", pos, stop)
            line = block[pos:le].rstrip(b"\r")
            pos = le + 1
            if self._lines_seen < 2 and self._check_header(line):
                continue  # MariaDB's sandbox line: not a statement
            if self._in_statement:
                self._statement_line(line)
            else:
                self._statement_start(line)

    def _check_header(self, line: bytes) -> bool:
        """Check the first line (or the one after the sandbox line); True when `line` was that one."""
        self._lines_seen += 1
        if self._lines_seen == 1 and line.startswith(_SANDBOX):
            self._facts["sandbox"] = True
            return True
        self._lines_seen = 2
        m = _HEADER.match(line)
        if m is None:
            shown = line[:60].decode("utf-8", "replace")
            self._fail(f"line 1: not a mysqldump/mariadb-dump header: {shown!r}")
            return False
        kind, client, distrib, distrib11, platform = m.groups()
        self._facts["tool"] = "mariadb-dump" if kind.lower() == b"mariadb" else "mysqldump"
        self._facts["tool_version"] = client.decode()
        self._facts["distrib"] = (distrib or distrib11).decode()
        self._facts["platform"] = platform.decode("utf-8", "replace").strip()
        return False

    def _statement_start(self, line: bytes) -> None:
        """A line at statement level that is not an INSERT: DDL, SET, comments, DELIMITER."""
        stripped = line.rstrip()
        if not stripped:
            return
        if stripped.startswith(b"--"):
            if stripped.startswith((b"-- CHANGE MASTER TO MASTER_LOG_FILE", b"-- SET GLOBAL gtid_slave_pos")):
                self._binlog_comment(stripped)
            elif self._in_preamble:
                self._preamble_comment(stripped)
            return
        self._in_preamble = False
        first = stripped[:1]
        if first in b"Dd" and stripped[:10].upper() == b"DELIMITER ":
            self._delimiter = stripped[10:].strip() or b";"
            return
        if first in b"Cc" and (m := _CREATE_TABLE.match(stripped)):
            self._tables.setdefault(self._name(m.group(1)), 0)
        elif first == b"/" and (m := _VIEW.match(stripped)):
            self._views.add(self._name(m.group(1)))
        elif first in b"Uu" and (m := _USE.match(stripped)):
            self._database = _unquote(m.group(1))
        elif first in b"/Cc" and (m := _CREATE_OBJECT.match(stripped)):
            self._record_object(m)
        if not stripped.endswith(self._delimiter):
            self._in_statement = True

    def _statement_line(self, line: bytes) -> None:
        """A continuation line; the final view definition starts on one (after ALGORITHM/DEFINER)."""
        stripped = line.rstrip()
        if stripped.startswith(b"/*!50001") and (m := _VIEW.match(stripped)):
            self._views.add(self._name(m.group(1)))
        if stripped.endswith(self._delimiter):
            self._in_statement = False

    def _preamble_comment(self, line: bytes) -> None:
        if m := _HOST.match(line):
            self._facts["host"] = m.group(1).decode("utf-8", "replace")
            self._facts["database"] = m.group(2).strip().decode("utf-8", "replace")
        elif m := _SERVER.match(line):
            self._facts["server_version"] = m.group(1).strip().decode("utf-8", "replace")

    def _binlog_comment(self, line: bytes) -> None:
        """The snapshot's binlog file/position and GTID position (facts binlog_file, binlog_pos, gtid)."""
        if m := _MASTER_POS.fullmatch(line):
            self._facts["binlog_file"] = m.group(1).decode("utf-8", "replace")
            self._facts["binlog_pos"] = int(m.group(2))
        elif m := _GTID_POS.fullmatch(line):
            self._facts["gtid"] = m.group(1).decode()

    def _name(self, ident: bytes) -> str:
        name = _unquote(ident)
        return f"{self._database}.{name}" if self._database else name

    def _record_object(self, m: re.Match[bytes]) -> None:
        kind = m.group(1).upper()
        name = self._name(m.group(3) or m.group(2))  # `db`.`name` -> name
        target = {
            b"PROCEDURE": self._procedures,
            b"FUNCTION": self._functions,
            b"TRIGGER": self._triggers,
            b"EVENT": self._events,
        }[kind]
        target.add(name)

    # -- INSERT statements -------------------------------------------------------------------------

    def _start_insert(self, block: bytes, pos: int, stop: int, m: re.Match[bytes]) -> int:
        """Count an INSERT from its first line; returns where parsing continues."""
        if self._lines_seen < 2:
            self._check_header(block[pos : block.find(b"\n", pos, stop)])
            return stop
        self._in_preamble = False
        table = self._name(m.group(1))
        self._tables.setdefault(table, 0)
        self._statements += 1
        vstart = m.end()
        le = block.find(b"\n", vstart, stop)
        if block[le - 1] == 59:  # ";": a one-line statement (MySQL, --skip-extended-insert)
            self._tables[table] += rows_in_values(block[vstart:le])
            return self._single_line_run(block, le + 1, stop, block[pos:vstart], table)
        end = block.find(b";\n", le - 1, stop)
        if end < 0:  # continues in the next chunk
            self._tables[table] += _count_rows(block, vstart, stop)
            self._insert_table = table
            return stop
        self._tables[table] += _count_rows(block, vstart, end + 2)
        return end + 2

    def _continue_insert(self, block: bytes, pos: int, stop: int) -> int:
        table = self._insert_table
        assert table is not None
        end = block.find(b";\n", pos, stop)
        if end < 0:
            self._tables[table] += _count_rows(block, pos, stop)
            return stop
        self._tables[table] += _count_rows(block, pos, end + 2)
        self._insert_table = None
        return end + 2

    def _single_line_run(self, block: bytes, pos: int, stop: int, header: bytes, table: str) -> int:
        """Count a run of one-line INSERTs with the same header in one pass (--skip-extended-insert
        writes one per row, and a Python loop per line would cost more than the whole dump)."""
        if not block.startswith(header, pos, stop):
            return pos
        run = self._runs.get(header)
        if run is None:
            run = self._runs[header] = re.compile(rb"(?:" + re.escape(header) + rb"[^\n]*;\n)*")
        m = run.match(block, pos, stop)
        assert m is not None  # the pattern matches the empty string
        end = m.end()
        lines = block.count(b"\n", pos, end)
        rows = lines  # each line starts one row after its header ...
        q = block.find(b"),(", pos, end)
        while q >= 0:  # ... and a line holding "),(" may hold more
            ls = block.rfind(b"\n", pos, q) + 1 or pos
            le = block.find(b"\n", q, end)
            rows += rows_in_values(block[ls + len(header) : le]) - 1
            q = block.find(b"),(", le, end)
        self._tables[table] += rows
        self._statements += lines
        return end


def describe(result: CheckResult) -> list[str]:
    """Human-readable summary for `backupd inspect`."""
    facts, stats = result.facts, result.stats
    tool = facts.get("tool", "unknown tool")
    head = f"SQL dump by {tool} {facts.get('tool_version', '?')} ({facts.get('distrib', '?')})"
    if "server_version" in facts:
        head += f", server {facts['server_version']}"
    if facts.get("database"):
        head += f", database {facts['database']}"
    if facts.get("host"):
        head += f" on {facts['host']}"
    lines = [head, "status: OK" if result.ok else "status: FAILED"]
    lines += [f"error: {e}" for e in result.errors]
    lines += [f"warning: {w}" for w in result.warnings]
    tables: dict[str, int] = stats.get("tables", {})
    lines.append(f"{len(tables)} tables, {stats.get('rows', 0)} rows in {stats.get('statements', 0)} INSERT statements")
    width = max((len(name) for name in tables), default=0)
    lines += [f"  {name:<{width}}  {rows:>12} rows" for name, rows in tables.items()]
    routines = stats.get("routines", {})
    for label, names in (
        ("views", stats.get("views", [])),
        ("procedures", routines.get("procedures", [])),
        ("functions", routines.get("functions", [])),
        ("triggers", stats.get("triggers", [])),
        ("events", stats.get("events", [])),
    ):
        lines.append(f"{label}: {', '.join(names) if names else '-'}")
    return lines
