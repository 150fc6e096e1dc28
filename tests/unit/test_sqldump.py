"""SqlDumpChecker against real mariadb-dump output (fixtures made by tests/fixtures/sqldump/make_fixtures.py)
and against generated dumps whose row counts are known by construction."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.formats.base import CheckResult
from backupd.formats.sqldump import SqlDumpChecker, describe, sniff
from tests.conftest import feed_in_chunks

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sqldump"
COUNTS: dict[str, Any] = json.loads((FIXTURES / "counts.json").read_text())
TRAILER_ERROR = "no '-- Dump completed' trailer: dump truncated or failed"


def load_make_fixtures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MAKE = load_make_fixtures()


def check(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(SqlDumpChecker(), data, chunk)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def to_mysql_style(dump: bytes) -> bytes:
    """MySQL's client writes no sandbox line, its own header and each extended INSERT on one line."""
    out: list[bytes] = []
    lines = dump.split(b"\n")
    if lines[0].startswith(b"/*M!999999"):
        lines = lines[1:]
    lines[0] = b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)"
    joining = False
    for line in lines:
        if joining:
            out[-1] += line
            joining = not line.endswith(b";")
        elif line.startswith(b"INSERT INTO") and line.endswith(b" VALUES"):
            out.append(line + b" ")
            joining = True
        else:
            out.append(line)
    return b"\n".join(out)


# -- real dumps against the server's own counts ---------------------------------------------------------


def test_full_dump_equals_server_counts() -> None:
    result = check(fixture("wp.sql"))
    assert result.ok, result.errors
    stats = result.stats
    assert stats["tables"] == COUNTS["tables"]
    assert stats["rows"] == sum(COUNTS["tables"].values())
    assert stats["views"] == COUNTS["views"]
    assert stats["routines"] == COUNTS["routines"]
    assert stats["triggers"] == COUNTS["triggers"]
    assert stats["events"] == COUNTS["events"]
    # the awkward cases really are in the fixture, so the counts above prove something
    assert stats["tables"]["wp_empty"] == 0
    assert "wp_published" not in stats["tables"]
    assert "wp log" in stats["routines"]["procedures"]  # its body holds a line "INSERT INTO `wp_audit` ..."
    data = fixture("wp.sql")
    assert data.count(b"),(") > 20 and b"\\\\'" in data and b"0x00" in data


@pytest.mark.parametrize("name", ["wp-netbuf.sql", "wp-skip-extended.sql"])
def test_partial_dumps_equal_server_counts(name: str) -> None:
    result = check(fixture(name))
    assert result.ok, result.errors
    tables = result.stats["tables"]
    assert tables == {t: COUNTS["tables"][t] for t in tables}
    assert len(tables) >= 2


def test_net_buffer_splits_tables_over_several_inserts() -> None:
    data = fixture("wp-netbuf.sql")
    result = check(data)
    assert result.stats["statements"] == data.count(b"\nINSERT IGNORE INTO ") > len(result.stats["tables"])


def test_skip_extended_insert_counts_one_statement_per_row() -> None:
    result = check(fixture("wp-skip-extended.sql"))
    assert result.stats["statements"] == result.stats["rows"] == sum(result.stats["tables"].values())


def test_facts_from_header() -> None:
    facts = check(fixture("wp.sql")).facts
    assert facts["tool"] == "mariadb-dump"
    assert facts["tool_version"] == "10.19"
    assert re.fullmatch(r"1\d\.\d+\.\d+-MariaDB", facts["distrib"])
    assert facts["server_version"].startswith(facts["distrib"].removesuffix("-MariaDB"))
    assert facts["host"] == "localhost"
    assert facts["database"] == "wp"
    assert facts["sandbox"] is True


@pytest.mark.parametrize("name", ["wp.sql", "wp-netbuf.sql", "wp-skip-extended.sql"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunk_size_does_not_change_result(name: str, chunk: int) -> None:
    data = fixture(name)
    assert check(data, chunk).to_dict() == check(data).to_dict()


# -- variants of the header and trailer -----------------------------------------------------------------


def test_mysql_style_header_and_one_line_inserts() -> None:
    data = to_mysql_style(fixture("wp.sql"))
    assert data.count(b"\n(") == 0  # really one line per statement: the exact (slow) path
    result = check(data)
    assert result.ok, result.errors
    assert result.stats["tables"] == COUNTS["tables"]
    assert result.facts["tool"] == "mysqldump"
    assert result.facts["distrib"] == "8.0.36"
    assert "sandbox" not in result.facts
    assert check(data, 7).to_dict() == result.to_dict()


def test_old_sandbox_line_and_mariadb_11_header() -> None:
    lines = fixture("wp.sql").split(b"\n")
    lines[0] = b"/*!999999\\- enable the sandbox mode */ "
    lines[1] = b"-- MariaDB dump 10.19-11.4.2-MariaDB, for debian-linux-gnu (x86_64)"
    result = check(b"\n".join(lines))
    assert result.ok, result.errors
    assert result.facts["distrib"] == "11.4.2-MariaDB"
    assert result.stats["tables"] == COUNTS["tables"]


def test_no_trailer_is_an_error() -> None:
    data = fixture("wp.sql")
    cut = data.rindex(b"-- Dump completed")
    result = check(data[:cut])
    assert not result.ok
    assert result.errors == [TRAILER_ERROR]


def test_trailer_without_date_and_with_space_padded_hour() -> None:
    data = fixture("wp-netbuf.sql")
    assert data.rstrip().endswith(b"\n-- Dump completed")
    assert check(data).ok
    padded = data.rstrip() + b" on 2025-06-04  3:41:26\n\n"
    assert check(padded).ok


@pytest.mark.parametrize("name", ["wp.sql", "wp-skip-extended.sql"])
def test_truncated_dump_fails_at_every_cut(name: str) -> None:
    data = fixture(name)
    trailer = data.rindex(b"-- Dump completed")
    header_end = data.index(b"\n--\n")  # a cut before it leaves no complete header line
    cuts = [*range(header_end, trailer, 97), data.index(b"(1,"), data.index(b"INSERT") + 5, trailer - 1]
    for cut in cuts:
        result = check(data[:cut])
        assert result.errors == [TRAILER_ERROR], cut
    for cut in range(1, header_end, 13):
        assert not check(data[:cut]).ok, cut


def test_not_a_dump() -> None:
    result = check(b"hello\nworld\n-- Dump completed\n")
    assert not result.ok
    assert result.errors[0].startswith("line 1: not a mysqldump/mariadb-dump header")
    assert check(b"").errors == ["empty stream: no dump header"]


def test_trailer_inside_a_string_is_not_a_trailer() -> None:
    head = b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n"
    data = head + b"INSERT INTO `t` VALUES (1,'x\\n-- Dump completed');\n"
    assert check(data).errors == [TRAILER_ERROR]


def test_databases_dump_qualifies_names() -> None:
    """--databases writes CREATE DATABASE/USE per database; the same table name must not merge."""
    head = b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n"
    body = b"".join(
        b"USE `%s`;\nCREATE TABLE `t` (\n  `a` int\n);\nINSERT INTO `t` VALUES\n%s;\n"
        % (db, b",\n".join(b"(%d)" % i for i in range(n)))
        for db, n in ((b"one", 2), (b"two", 3))
    )
    result = check(head + body + b"-- Dump completed\n")
    assert result.stats["tables"] == {"one.t": 2, "two.t": 3}


def test_sniff() -> None:
    assert sniff(fixture("wp.sql")[:64])
    assert sniff(b"/*M!999999\\- enable the sandbox mode */ ")
    assert sniff(b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n")
    assert not sniff(b"/*M!999999\\- enable the sandbox mode */ \nSELECT 1;\n")
    assert not sniff(b"REDIS0011\xfa")
    assert not sniff(b"")


def test_describe() -> None:
    text = "\n".join(describe(check(fixture("wp.sql"))))
    assert "mariadb-dump 10.19" in text and "database wp on localhost" in text
    assert re.search(r"wp_postmeta\s+60 rows", text)
    assert "triggers: wp_users_after_insert" in text and "events: wp_cleanup" in text
    assert "views: wp_published" in text and "functions: wp_slug" in text
    failed = "\n".join(describe(check(fixture("wp.sql")[:500])))
    assert "FAILED" in failed and TRAILER_ERROR in failed


# -- generated rows: exactness over arbitrary string content ---------------------------------------------

_ESCAPES = {0: b"\\0", 10: b"\\n", 13: b"\\r", 92: b"\\\\", 39: b"\\'", 34: b'\\"', 26: b"\\Z"}


def sql_string(value: bytes) -> bytes:
    """Quote the way the client library does for mysqldump (mysql_real_escape_string)."""
    return b"'" + b"".join(_ESCAPES.get(c, bytes([c])) for c in value) + b"'"


def render_dump(tables: dict[str, list[list[bytes | int | None]]], style: str) -> bytes:
    """`style`: "lines" (MariaDB, a row per line), "one-line" (MySQL) or "per-row" (--skip-extended-insert)."""
    out = [b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)", b"--"]
    for name, rows in tables.items():
        quoted = b"`" + name.replace("`", "``").encode() + b"`"
        out.append(b"CREATE TABLE " + quoted + b" (\n  `a` int\n) ENGINE=InnoDB;")
        if not rows:
            continue
        rendered = [
            b"("
            + b",".join(b"NULL" if v is None else str(v).encode() if isinstance(v, int) else sql_string(v) for v in row)
            + b")"
            for row in rows
        ]
        header = b"INSERT INTO " + quoted + b" VALUES"
        if style == "lines":
            out.append(header + b"\n" + b",\n".join(rendered) + b";")
        elif style == "one-line":
            out.append(header + b" " + b",".join(rendered) + b";")
        else:
            out += [header + b" " + row + b";" for row in rendered]
    out += [b"", b"-- Dump completed on 2025-06-04  3:41:26", b""]
    return b"\n".join(out)


_nasty = st.binary(max_size=40) | st.sampled_from(
    [b"),(", b"'),('", b"\\", b"x\\", b"'", b");\n", b"),\n(", b"\n(", b"-- Dump completed", b"VALUES ("]
)
_row = st.lists(st.integers(-5, 10**6) | st.none() | _nasty, min_size=1, max_size=4)
_tables = st.dictionaries(st.sampled_from(["wp_posts", "wp_a(b)", "t`x"]), st.lists(_row, max_size=12))


@settings(max_examples=150, deadline=None)
@given(tables=_tables, style=st.sampled_from(["lines", "one-line", "per-row"]), chunk=st.integers(1, 64))
def test_generated_dumps_count_exactly(tables: dict[str, list[list[Any]]], style: str, chunk: int) -> None:
    data = render_dump(tables, style)
    result = check(data, chunk)
    assert result.ok, result.errors
    assert result.stats["tables"] == {name: len(rows) for name, rows in tables.items()}
    assert check(data).stats == result.stats  # whole-block paths (runs of one-line INSERTs) agree


def test_skip_extended_run_with_tricky_strings() -> None:
    head = b"-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n"
    body = b"".join(
        b"INSERT INTO `t` VALUES (%d,%s);\n" % (i, sql_string(s))
        for i, s in enumerate([b"a", b"),(", b"x'),('y", b"\\", b"", b"(((", b"),(),("])
    )
    data = head + body + b"INSERT INTO `t` VALUES (7,'a'),(8,'),(');\n-- Dump completed\n"
    result = check(data)
    assert result.stats["tables"] == {"t": 9}
    assert result.stats["statements"] == 8


# -- against a live server ----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(MAKE.mariadbd_path() is None, reason="mariadbd is not installed")
def test_live_server_dump_matches_count_star(tmp_path: Path) -> None:
    counts = MAKE.generate(tmp_path)
    result = check((tmp_path / "wp.sql").read_bytes(), 4096)
    assert result.ok, result.errors
    assert result.stats["tables"] == counts["tables"]
    assert result.stats["routines"] == counts["routines"]
    assert result.stats["triggers"] == counts["triggers"]
    assert result.stats["events"] == counts["events"]
    assert result.stats["views"] == counts["views"]
