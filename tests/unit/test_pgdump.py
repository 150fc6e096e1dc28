"""PgCustomChecker and PgPlainChecker against real pg_dump output from a throwaway PostgreSQL server.

The server is started once for the module (see `dumps`); archives of the other archive versions (1.13,
1.15, 1.16) and compression labels are made from the real ones by `transcode`, which rewrites only the
header and TOC fields that differ between versions, so their data blocks are still pg_dump's own.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backupd.formats import registry
from backupd.formats.base import CheckResult, FormatChecker
from backupd.formats.pgdump import PgCustomChecker, PgPlainChecker, describe, sniff, sniff_plain
from tests.conftest import feed_in_chunks

SQLDUMP_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sqldump" / "wp.sql"
LONG_BODY = 100_000  # a function body longer than the checker's TOC string cap (64 KiB)

SCHEMA_SQL = r"""
CREATE SCHEMA app;
CREATE TABLE app.blobs (id int PRIMARY KEY, payload bytea);
INSERT INTO app.blobs SELECT i, decode(repeat(lpad(to_hex(i % 256), 2, '0'), i % 50), 'hex')
    FROM generate_series(1, 300) i;
INSERT INTO app.blobs VALUES (1000, '\x0a5c2e0a0d0900ff'::bytea);
CREATE TABLE app.docs (id int PRIMARY KEY, body jsonb);
INSERT INTO app.docs SELECT i, jsonb_build_object('n', i, 's', E'line\nbreak "quoted" \\ back\ttab',
    'a', jsonb_build_array(i, i * 2)) FROM generate_series(1, 250) i;
CREATE TABLE app.notes (id serial PRIMARY KEY, note text, updated timestamptz);
INSERT INTO app.notes (note) VALUES (E'it''s "quoted"'), (E'back\\slash'), (E'new\nline'), (E'tab\there'),
    (E'\\.'), (E'\n\\.\n'), (''), (NULL), (E'cr\rlf\r\n'), ('-- PostgreSQL database dump complete');
CREATE TABLE app.empty (id int);
-- rows of 2 to 4 bytes: chunks shorter than the 5-byte COPY terminator
CREATE TABLE app.tiny (n int);
INSERT INTO app.tiny SELECT i FROM generate_series(1, 120) i;
-- no columns: every row is an empty line, a 1-byte chunk
CREATE TABLE app.nocols ();
INSERT INTO app.nocols DEFAULT VALUES; INSERT INTO app.nocols DEFAULT VALUES; INSERT INTO app.nocols DEFAULT VALUES;
-- chunk lengths holding a 0x0A byte (10, 266, 2570) and one chunk over 64 KiB
CREATE TABLE app.lengths (id int, pad text);
INSERT INTO app.lengths VALUES (1, repeat('a', 7)), (2, repeat('b', 263)), (3, repeat('c', 2567)),
    (4, repeat('d', 70000));
CREATE TABLE app."Odd ""Name"" x" (v text);
INSERT INTO app."Odd ""Name"" x" VALUES ('x'), ('y');
CREATE TABLE public.big (id bigint PRIMARY KEY, name text, score double precision);
INSERT INTO public.big SELECT i, 'name-' || i, i / 7.0 FROM generate_series(1, 20000) i;
CREATE VIEW app.note_view AS SELECT id, note FROM app.notes;
CREATE MATERIALIZED VIEW app.big_stats AS SELECT count(*) AS n FROM public.big;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.updated := now(); RETURN NEW; END $$;
-- a body whose lines look like the end of a plain dump and like table data
CREATE FUNCTION app.tricky() RETURNS text LANGUAGE sql AS $body$
SELECT $q$
COPY app.fake (a) FROM stdin;
-- PostgreSQL database dump complete
\.
$q$::text
$body$;
CREATE FUNCTION app.long_body() RETURNS int LANGUAGE sql AS $$ SELECT 1 /* LONG */ $$;
CREATE TRIGGER notes_touch BEFORE UPDATE ON app.notes FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE SEQUENCE app.counter;
SELECT setval('app.counter', 42);
SELECT lo_from_bytea(0, 'large object payload');
SELECT lo_from_bytea(0, '');
""".replace("LONG", "x" * LONG_BODY)

TABLES = [
    'app.Odd "Name" x',
    "app.blobs",
    "app.docs",
    "app.empty",
    "app.lengths",
    "app.nocols",
    "app.notes",
    "app.tiny",
    "public.big",
]
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore", "psql")
INITDB_OPTIONS = ("-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")


# -- the server ------------------------------------------------------------------------------------


def find_bindir() -> Path | None:
    """PostgreSQL's binaries: $PG_BINDIR, the directory initdb resolves to, pg_config's, or Debian's."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if initdb := shutil.which("initdb"):
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    debian = glob.glob("/usr/lib/postgresql/*/bin")  # newest first
    candidates += sorted(debian, key=lambda c: [int(n) for n in re.findall(r"\d+", c)], reverse=True)
    for c in candidates:
        if c and all(os.access(os.path.join(c, tool), os.X_OK) for tool in TOOLS):
            return Path(c)
    return None


def server_user() -> str | None:
    """The OS user to run initdb and postgres as: None (ourselves) unless we are root, which they refuse.

    As root: the `postgres` user if the system has one (the packages create it), else a system user
    `backupd-pg` created here once with useradd. Commands then run through `runuser -u USER --`.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "backupd-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "backupd-pg"],
        check=True,
        capture_output=True,
    )
    return "backupd-pg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dumps:
    """pg_dump output of one database, and what the server itself says is in it."""

    bindir: Path
    workdir: Path
    pipe: bytes  # -Fc --compress=0 to a pipe: TOC offsets not set
    file: bytes  # -Fc --compress=0 -f: TOC offsets set
    zlib: bytes  # -Fc (default compression) -f
    zlib_pipe: bytes  # -Fc to a pipe
    plain: bytes  # --format=plain to a pipe
    inserts: bytes  # -Fc --compress=0 --inserts to a pipe
    counts: dict[str, int] = field(default_factory=dict)
    large_objects: int = 0

    def path(self, name: str, data: bytes) -> Path:
        path = self.workdir / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def dumps() -> Iterator[Dumps]:
    """Start a throwaway PostgreSQL (initdb in a temp dir, `pg_ctl start` on a free port, trust auth,
    socket in the same dir), load SCHEMA_SQL, take the dumps, stop and delete the server.

    postgres refuses to run as root, so as root initdb and pg_ctl run as `server_user()` through
    runuser, in a directory under /tmp chowned to that user (pytest's own tmp dirs are 0700 root);
    the clients (psql, pg_dump) run as ourselves and connect as database user postgres.
    """
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, postgres, pg_dump, pg_restore, psql) not found")
    user = server_user()
    if user and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start postgres as another user")
    as_user = ["runuser", "-u", user, "--"] if user else []
    root = Path(tempfile.mkdtemp(prefix="backupd-pgdump-", dir="/tmp" if user else None))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}

    def run(*argv: str | Path, check: bool = True, text: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(a) for a in argv], input=text, capture_output=True, text=True, env=env)
        if check and proc.returncode:
            pytest.fail(f"{Path(argv[len(as_user)]).name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    started = False
    try:
        run(*as_user, bindir / "initdb", "-D", data, *INITDB_OPTIONS)
        for _attempt in range(3):  # the free port may be taken between probing and binding
            port = free_port()
            options = f"-k {root} -p {port} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
            pg_ctl = [*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "server.log"]
            if run(*pg_ctl, "start", "-w", "-t", "60", "-o", options, check=False).returncode == 0:
                started = True
                break
        if not started:
            pytest.fail("postgres did not start: " + (root / "server.log").read_text(errors="replace")[-2000:])
        conn = ["-h", str(root), "-p", str(port), "-U", "postgres"]

        def psql(sql: str, db: str = "shop") -> str:
            return run(bindir / "psql", *conn, "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt", text=sql).stdout

        def pg_dump(*args: str) -> bytes:
            argv = [str(bindir / "pg_dump"), *conn, *args, "shop"]
            return subprocess.run(argv, capture_output=True, check=True, env=env).stdout

        psql("CREATE DATABASE shop", db="postgres")
        psql(SCHEMA_SQL)
        work = root / "work"
        work.mkdir()
        pg_dump("-Fc", "--compress=0", "-f", str(work / "file.pgc"))
        pg_dump("-Fc", "-f", str(work / "zlib.pgc"))
        result = Dumps(
            bindir=bindir,
            workdir=work,
            pipe=pg_dump("-Fc", "--compress=0"),
            file=(work / "file.pgc").read_bytes(),
            zlib=(work / "zlib.pgc").read_bytes(),
            zlib_pipe=pg_dump("-Fc"),
            plain=pg_dump("--format=plain"),
            inserts=pg_dump("-Fc", "--compress=0", "--inserts"),
        )
        for table in TABLES:
            schema, name = table.split(".", 1)
            ident = '"' + name.replace('"', '""') + '"'
            result.counts[table] = int(psql(f"SELECT count(*) FROM {schema}.{ident}"))
        result.large_objects = int(psql("SELECT count(*) FROM pg_largeobject_metadata"))
        yield result
    finally:
        if started:
            run(*pg_ctl, "stop", "-m", "immediate", check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------


def check(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(PgCustomChecker(), data, chunk)


def check_plain(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(PgPlainChecker(), data, chunk)


def feed_randomly(checker: FormatChecker, data: bytes, seed: int, biggest: int = 4096) -> CheckResult:
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 5, 6, rng.randint(1, biggest)))
        checker.feed(data[i : i + n])
        i += n
    return checker.finish()


def restore_ok(dumps: Dumps, data: bytes, name: str = "check.pgc") -> bool:
    """pg_restore reads every block (no database needed with -f /dev/null)."""
    path = dumps.path(name, data)
    proc = subprocess.run([str(dumps.bindir / "pg_restore"), "-f", "/dev/null", str(path)], capture_output=True)
    return proc.returncode == 0


@dataclass
class _Entry:
    start: int
    tableam: tuple[int, int]  # span of the tableam Str
    offset_at: int
    has_data: bool


class Layout:
    """A whole-buffer reader of an archive written for the tests, independent of the checker: where
    the header, TOC entries, blocks and chunks are, and which bytes are framing (a change to any of
    them must be caught: magic, sizes, lengths, sign bytes, flags, offsets, ids, block headers, chunk
    lengths, the COPY terminator) as opposed to content (names, SQL text, row data)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.p = 0
        self.framing: set[int] = set()
        self.checked: set[int] = set()  # content the checker validates (digits, "false"): 0x01 may keep it valid
        self.entries: list[_Entry] = []
        self.blocks: list[tuple[int, int]] = []
        self.chunks: list[int] = []
        self.oids: set[int] = set()  # large object OIDs: content, not framing
        assert data[:5] == b"PGDMP" and data[5:8] == b"\x01\x0e\x00" and data[8] == 4, "a 1.14 archive, intSize 4"
        self.framing.update([0, 1, 2, 3, 4, 5, 6, 8, 9, 10])  # magic, vmaj, vmin, intSize, offSize, format
        self.p = 11
        self.int(True)  # compression level
        for _ in range(7):
            self.int()
        for _ in range(3):
            self.str()
        self.toc_start = self.p
        for _ in range(self.int(True)):
            self._entry()
        self.data_start = self.p
        while self.p < len(data):
            self._block()

    def int(self, whole: bool = False) -> int:
        p = self.p
        self.framing.update(range(p, p + 5) if whole else (p,))
        self.p += 5
        value = int.from_bytes(self.data[p + 1 : p + 5], "little")
        return -value if self.data[p] else value

    def str(self, checked: bool = False) -> bytes | None:
        n = self.int(True)
        if n < 0:
            return None
        if checked:
            self.checked.update(range(self.p, self.p + n))
        self.p += n
        return self.data[self.p - n : self.p]

    def _entry(self) -> None:
        start, id_at = self.p, self.p
        self.int()
        self.int(True)  # hadDumper
        self.str(True)
        self.str(True)  # tableoid, oid
        for _ in range(2):
            self.str()  # tag, desc
        section = self.p
        self.int(True)
        self.framing.discard(section + 1)  # the section: a change within 1..4 may keep the order valid
        self.checked.add(section + 1)
        for _ in range(5):
            self.str()  # defn, dropStmt, copyStmt, namespace, tablespace
        am = self.p
        self.str()
        tableam = (am, self.p)
        self.str()  # owner
        self.str(True)  # withOids
        while self.str(True) is not None:
            pass
        offset_at = self.p
        self.framing.update(range(self.p, self.p + 9))
        has_data = self.data[self.p] != 3
        self.p += 9
        if has_data:
            self.framing.update(range(id_at + 1, id_at + 5))
        self.entries.append(_Entry(start, tableam, offset_at, has_data))

    def _block(self) -> None:
        start = self.p
        kind = self.data[self.p]
        self.framing.add(self.p)
        self.p += 1
        self.int(True)
        if kind == 1:
            self._chunks(copy=True)
        else:
            while True:  # a large object's OID: any value but 0 is valid (above 2^31 it is negative)
                self.oids.update(range(self.p, self.p + 5))
                if self.int(True) == 0:
                    break
                self.framing.difference_update(range(self.p - 5, self.p))
                self._chunks(copy=False)
        self.blocks.append((start, self.p))

    def _chunks(self, copy: bool) -> None:
        last = (0, 0)
        while True:
            self.chunks.append(self.p)
            n = self.int(True)
            if n == 0:
                break
            last = (self.p, self.p + n)
            self.p += n
        if copy and self.data[last[0] : last[1]] == b"\\.\n\n\n":
            self.framing.update(range(*last))


def transcode(data: bytes, minor: int, algorithm: int | None = None) -> bytes:
    """A real 1.14 archive rewritten as archive version 1.`minor` (13 to 16), as a pipe writes it (no
    data offsets): 1.15+ has a 1-byte compression algorithm in the header (`algorithm` overrides the one
    implied by the zlib level), 1.13 no tableam, 1.16 a relkind Int in every TOC entry."""
    layout = Layout(data)
    level = int.from_bytes(data[12:16], "little") * (-1 if data[11] else 1)
    out = bytearray(data[:5] + bytes([1, minor, 0]) + data[8:11])
    if minor >= 15:
        out.append(algorithm if algorithm is not None else (0 if level == 0 else 1))
    else:
        out += data[11:16]
    out += data[16 : layout.toc_start + 5]
    for e in layout.entries:
        piece = bytearray(data[e.start : e.offset_at])
        am_start, am_end = e.tableam[0] - e.start, e.tableam[1] - e.start
        if minor >= 16:
            piece[am_end:am_end] = b"\x00r\x00\x00\x00"  # relkind 'r'
        if minor < 14:
            del piece[am_start:am_end]
        out += piece + (b"\x01" if e.has_data else b"\x03") + bytes(8)
    out += data[layout.data_start :]
    return bytes(out)


# -- custom format: real archives ------------------------------------------------------------------


def assert_counts(result: CheckResult, dumps: Dumps) -> None:
    assert result.ok, result.errors
    assert result.stats["tables"] == dumps.counts
    assert result.stats["rows"] == sum(dumps.counts.values())
    assert result.stats["large_objects"] == dumps.large_objects == 2


@pytest.mark.parametrize("kind", ["pipe", "file", "zlib", "zlib_pipe"])
def test_real_archive_counts(dumps: Dumps, kind: str) -> None:
    data: bytes = getattr(dumps, kind)
    result = check(data)
    assert_counts(result, dumps)
    stats, facts = result.stats, result.facts
    assert result.warnings == []
    assert stats["views"] == ["app.note_view"]
    assert stats["materialized_views"] == ["app.big_stats"]
    assert stats["functions"] == ["app.long_body()", "app.touch()", "app.tricky()"]
    assert stats["sequences"] == ["app.counter", "app.notes_id_seq"]
    assert stats["triggers"] == ["app.notes notes_touch"]  # a trigger's tag is "table trigger"
    assert stats["schemas"] == ["app"]
    assert stats["sequence_values"] == {"app.counter": 42, "app.notes_id_seq": 10}
    assert stats["objects"]["TABLE DATA"] == len(TABLES)
    assert stats["objects"]["BLOB"] == 2
    assert stats["toc_entries"] == sum(stats["objects"].values())
    assert stats["data_blocks"] == len(TABLES) + 1  # and one BLOBS block
    assert facts["database"] == "shop"
    assert facts["archive_version"] == "1.14.0"
    assert facts["server_version"].startswith(facts["pg_dump_version"].split()[0])
    assert facts["compression"] == ("gzip" if kind.startswith("zlib") else "none")
    assert facts["compression_level"] == (-1 if kind.startswith("zlib") else 0)
    assert facts["toc_offsets"] == ("not set" if kind.endswith("pipe") else "set")
    assert facts["encoding"] == "UTF8"


def test_pipe_and_file_differ_only_in_toc_offsets(dumps: Dumps) -> None:
    pipe, file = Layout(dumps.pipe), Layout(dumps.file)
    assert len(dumps.pipe) == len(dumps.file) and pipe.data_start == file.data_start
    diff = [i for i, (a, b) in enumerate(zip(dumps.pipe, dumps.file, strict=True)) if a != b]
    offsets = {i for e in file.entries if e.has_data for i in range(e.offset_at, e.offset_at + 9)}
    assert diff and all(i in offsets or 16 <= i < 16 + 35 for i in diff)  # or the creation time
    block_starts = [start for start, _ in file.blocks]
    recorded = [
        int.from_bytes(dumps.file[e.offset_at + 1 : e.offset_at + 9], "little") for e in file.entries if e.has_data
    ]
    assert recorded == block_starts


@pytest.mark.parametrize("kind", ["pipe", "file", "zlib", "inserts"])
def test_pg_restore_accepts_what_the_checker_accepts(dumps: Dumps, kind: str) -> None:
    data: bytes = getattr(dumps, kind)
    assert check(data).ok
    assert restore_ok(dumps, data, f"{kind}.pgc")


@pytest.mark.parametrize("kind", ["pipe", "file", "zlib"])
def test_chunk_boundaries_anywhere(dumps: Dumps, kind: str) -> None:
    data: bytes = getattr(dumps, kind)
    whole = check(data).to_dict()
    assert check(data, 7).to_dict() == whole
    for seed in range(3):
        assert feed_randomly(PgCustomChecker(), data, seed).to_dict() == whole


def split_points(data: bytes, around: list[int], before: int, after: int) -> list[int]:
    return sorted({p for a in around for p in range(max(1, a - before), min(len(data), a + after + 1))})


def feed_split(data: bytes, at: int) -> CheckResult:
    checker = PgCustomChecker()
    checker.feed(data[:at])
    checker.feed(data[at:])
    return checker.finish()


@pytest.mark.parametrize("kind", ["pipe", "zlib_pipe"])
def test_split_inside_block_headers_and_chunk_lengths(dumps: Dumps, kind: str) -> None:
    """A feed boundary at every byte around every block header (type byte, dumpId Int, the first chunk
    length) and every block end (the last chunk, the closing Int 0, the next block's header)."""
    data: bytes = getattr(dumps, kind)
    layout = Layout(data)
    whole = check(data).to_dict()
    assert whole["ok"] and whole["stats"]["tables"] == dumps.counts
    starts, ends = [s for s, _ in layout.blocks], [e for _, e in layout.blocks]
    points = split_points(data, starts, 1, 11) + split_points(data, ends, 11, 1)
    for at in points:
        assert feed_split(data, at).to_dict() == whole, at


def test_split_inside_escaped_rows(dumps: Dumps) -> None:
    """A feed boundary inside COPY rows holding escapes (backslash-n, an escaped backslash, backslash-dot,
    backslash-r backslash-n), and around the terminator line and the chunk header that follows a row: rows are
    counted the same whichever byte a feed ends at."""
    data = dumps.pipe
    whole = check(data).to_dict()
    assert whole["ok"] and whole["stats"]["tables"] == dumps.counts
    start = Layout(data).data_start
    escapes = [m.start() for m in re.compile(rb"\\\\\.|\\r\\n|\\n|\\\\").finditer(data, start)]
    terminators = [m.start() for m in re.compile(rb"\x00\x05\x00\x00\x00\\\.\n\n\n").finditer(data, start)]
    assert len(escapes) > 20 and len(terminators) == len(TABLES)  # the chunk holding the terminator, its header
    points = split_points(data, escapes[:: len(escapes) // 20], 1, 4) + split_points(data, terminators, 6, 12)
    for at in points:
        assert feed_split(data, at).to_dict() == whole, at


def feed_bytewise(checker: FormatChecker, data: bytes, bulk: tuple[int, int]) -> CheckResult:
    """Feed `data` one byte at a time, except data[bulk[0]:bulk[1]] in one piece (time)."""
    for i in (*range(bulk[0]), *range(bulk[1], len(data))):
        checker.feed(data[i : i + 1])
        if i == bulk[0] - 1:
            checker.feed(data[bulk[0] : bulk[1]])
    return checker.finish()


@pytest.mark.parametrize("kind", ["file", "zlib"])
def test_one_byte_chunks(dumps: Dumps, kind: str) -> None:
    """Header, TOC, every table's block but the middle of public.big's, and the large objects."""
    data: bytes = getattr(dumps, kind)
    start, end = Layout(data).blocks[-2]  # public.big; the large objects come last
    assert feed_bytewise(PgCustomChecker(), data, (start + 3000, end - 3000)).to_dict() == check(data).to_dict()


def test_inserts_archive_is_walked_but_not_counted(dumps: Dumps) -> None:
    result = check(dumps.inserts)
    assert result.ok, result.errors
    assert result.stats["tables"] == {}
    assert result.stats["uncounted_tables"] == sorted(TABLES)
    assert result.stats["large_objects"] == 2


# -- custom format: damage -------------------------------------------------------------------------


def cut_points(layout: Layout) -> dict[str, list[int]]:
    data = layout.data
    n = len(data)
    return {
        "header": list(range(0, layout.toc_start, 3)),
        "toc": [e.start for e in layout.entries] + [e.offset_at + 4 for e in layout.entries],
        "boundary": [start for start, _ in layout.blocks],
        "mid-block": [start + 1 for start, _ in layout.blocks]
        + [end - 1 for _, end in layout.blocks]
        + layout.chunks[1::997]
        + [c + 3 for c in layout.chunks[::1499]],
        "even": [i * n // 200 for i in range(200)],
    }


@pytest.mark.parametrize("kind", ["pipe", "file", "zlib"])
def test_every_truncation_fails(dumps: Dumps, kind: str) -> None:
    data: bytes = getattr(dumps, kind)
    layout = Layout(data)
    expected = {
        "header": ("inside the magic", "inside the header", "empty stream"),
        "toc": ("inside the TOC", "inside TOC entry"),
        "boundary": ("truncated at a block boundary",),
        "mid-block": ("inside the data block", "inside the block header"),
    }
    for where, points in cut_points(layout).items():
        for cut in points:
            result = check(data[:cut])
            assert not result.ok, (where, cut)
            assert "truncated" in result.errors[0] or cut == 0, (where, cut, result.errors)
            if where in expected:
                assert any(s in result.errors[0] for s in expected[where]), (where, cut, result.errors)


def test_pg_restore_agrees_on_truncations(dumps: Dumps) -> None:
    layout = Layout(dumps.file)
    for cut in (layout.toc_start + 40, layout.blocks[3][0], layout.blocks[-2][0] + 100):
        assert not check(dumps.file[:cut]).ok
        assert not restore_ok(dumps, dumps.file[:cut])


def flipped(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


@pytest.mark.parametrize("kind", ["pipe", "file"])
def test_flipped_framing_bytes_are_caught(dumps: Dumps, kind: str) -> None:
    data: bytes = getattr(dumps, kind)
    layout = Layout(data)
    framing = sorted(layout.framing)
    head = [i for i in framing if i < layout.data_start]
    body = [i for i in framing if i >= layout.data_start]
    sample = head[::4] + [s for s, _ in layout.blocks] + body[::613]
    if kind == "file":  # the rest is as in the pipe's archive
        sample = [i for e in layout.entries if e.has_data for i in range(e.offset_at, e.offset_at + 9)]
    for at in sample:
        for mask in (0xFF, 0x01):
            result = check(flipped(data, at, mask))
            assert not result.ok, (at, mask, result.stats["tables"])
    for at in sorted(layout.checked)[:: 5 if kind == "pipe" else 50]:
        assert not check(flipped(data, at, 0xFF)).ok, at


def test_flipped_bytes_in_zlib_data_are_caught(dumps: Dumps) -> None:
    """Almost every changed byte of zlib data fails its stream. Not all: deflate has several encodings
    of the same text (a change in a run of one repeated byte may decode to the same run), and
    Adler-32 misses some changes of repetitive text ("544.4285714285714" to "5444.428571428571" keeps
    it). Such changes leave the counts as they were; the stored file's sha256 is what catches them."""
    layout = Layout(dumps.zlib)
    good = check(dumps.zlib).stats
    sample = [at for at in range(layout.data_start, len(dumps.zlib), 499) if at not in layout.oids]
    passed = [r for r in (check(flipped(dumps.zlib, at, 0x20)) for at in sample) if r.ok]
    assert len(passed) <= len(sample) // 50
    assert all(r.stats == good for r in passed)


def test_flipped_newline_changes_the_row_count(dumps: Dumps) -> None:
    row = dumps.pipe.index(b"\tname-1234\t")
    end = dumps.pipe.index(b"\n", row)
    result = check(flipped(dumps.pipe, end, 0x20))  # two rows become one: still a valid archive
    assert result.ok, result.errors
    assert result.stats["tables"]["public.big"] == dumps.counts["public.big"] - 1


def test_block_order_and_duplicates(dumps: Dumps) -> None:
    layout = Layout(dumps.pipe)
    data = dumps.pipe
    (a0, a1), (b0, b1) = layout.blocks[1], layout.blocks[2]
    swapped = data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]
    assert "out of TOC order" in check(swapped).errors[0]
    twice = data[:b0] + data[a0:a1] + data[b0:]
    assert "a second data block" in check(twice).errors[0]
    assert "after the last one" in check(data + data[a0:a1]).errors[0]
    last = layout.blocks[-1][0]
    assert "block type 2" in check(data[:last] + b"\x02" + data[last + 1 :]).errors[0]


def test_file_offsets_must_point_at_the_blocks(dumps: Dumps) -> None:
    layout = Layout(dumps.file)
    entry = next(e for e in layout.entries if e.has_data)
    at = entry.offset_at + 1
    moved = dumps.file[:at] + (int.from_bytes(dumps.file[at : at + 8], "little") + 1).to_bytes(8, "little")
    result = check(moved + dumps.file[at + 8 :])
    assert "the TOC says its block is at offset" in result.errors[0]


def test_copy_terminator_is_required(dumps: Dumps) -> None:
    data = dumps.pipe
    at = data.index(b"\\.\n\n\n")
    result = check(data[:at] + b"X.\n\n\n" + data[at + 5 :])
    assert "does not end with the \\. line" in result.errors[0]


def test_zlib_stream_must_end_with_its_block(dumps: Dumps) -> None:
    data = dumps.zlib_pipe
    layout = Layout(data)
    start, end = layout.blocks[-2]  # public.big: several 4 KiB chunks of one zlib stream
    chunks = [c for c in layout.chunks if start < c < end]  # the last is the block's closing Int 0
    assert len(chunks) > 3 and chunks[-1] == end - 5
    extra = b"\x00" + (3).to_bytes(4, "little") + b"abc"  # a chunk after the stream's end
    result = check(data[: end - 5] + extra + data[end - 5 :])
    assert "after the end of its zlib stream" in result.errors[0]
    result = check(data[: chunks[-2]] + data[end - 5 :])  # the stream's last chunk dropped
    assert "zlib stream of the data is incomplete" in result.errors[0]
    mid = chunks[1] + 100
    assert "corrupt zlib data" in check(data[:mid] + bytes(8) + data[mid + 8 :]).errors[0]


def test_not_a_custom_archive() -> None:
    assert "empty stream" in check(b"").errors[0]
    assert "not a pg_dump custom archive" in check(b"PGDMQ\x01\x0e\x00").errors[0]
    toc_dat = b"PGDMP\x01\x0e\x00\x04\x08\x05" + bytes(40)  # a directory-format dump's toc.dat
    assert "archive format 5 (directory)" in check(toc_dat).errors[0]
    assert "unsupported archive version 1.17" in check(b"PGDMP\x01\x11\x00\x04\x08\x01").errors[0]
    assert "unsupported archive version 1.11" in check(b"PGDMP\x01\x0b\x00\x04\x08\x01").errors[0]
    assert "sanity check on integer size" in check(b"PGDMP\x01\x0e\x00\x21\x08\x01").errors[0]


# -- custom format: other archive versions ---------------------------------------------------------


@pytest.mark.parametrize("minor", [13, 14, 15, 16])
@pytest.mark.parametrize("kind", ["pipe", "zlib_pipe"])
def test_archive_versions(dumps: Dumps, minor: int, kind: str) -> None:
    data = transcode(getattr(dumps, kind), minor)
    if minor == 14:
        assert data == getattr(dumps, kind)
    result = check(data)
    assert_counts(result, dumps)
    assert result.facts["archive_version"] == f"1.{minor}.0"
    assert result.facts["compression"] == ("gzip" if kind == "zlib_pipe" else "none")
    assert ("compression_level" in result.facts) == (minor < 15)
    assert feed_randomly(PgCustomChecker(), data, minor).to_dict() == result.to_dict()
    # a reader that takes the wrong version's layout gets lost: the version bytes matter
    wrong = data[:6] + bytes([14 if minor != 14 else 16]) + data[7:]
    assert not check(wrong).ok


@pytest.mark.parametrize("algorithm", ["lz4", "zstd"])
def test_lz4_zstd_blocks_are_walked_not_counted(dumps: Dumps, algorithm: str) -> None:
    data = transcode(dumps.pipe, 16, algorithm={"lz4": 2, "zstd": 3}[algorithm])
    result = check(data)
    assert result.ok, result.errors
    assert result.facts["compression"] == algorithm
    assert any("rows were not counted" in w for w in result.warnings)
    assert result.stats["tables"] == {} and result.stats["uncounted_tables"] == sorted(TABLES)
    assert result.stats["large_objects"] == 2
    assert not check(data[:-7]).ok


# -- plain format ----------------------------------------------------------------------------------


def test_plain_counts_match_the_server_and_the_custom_archive(dumps: Dumps) -> None:
    result = check_plain(dumps.plain)
    assert_counts(result, dumps)
    custom = check(dumps.pipe).stats
    for key in (
        "tables",
        "rows",
        "large_objects",
        "views",
        "materialized_views",
        "functions",
        "sequences",
        "triggers",
        "schemas",
        "sequence_values",
    ):
        assert result.stats[key] == custom[key], key
    assert result.facts["server_version"] and result.facts["pg_dump_version"]
    assert result.facts.get("restrict") == (b"\n\\restrict " in dumps.plain)


def test_plain_chunk_boundaries_anywhere(dumps: Dumps) -> None:
    whole = check_plain(dumps.plain).to_dict()
    big = dumps.plain.index(b"COPY public.big")
    big_end = dumps.plain.index(b"\n\\.\n", big)
    assert feed_bytewise(PgPlainChecker(), dumps.plain, (big + 3000, big_end - 3000)).to_dict() == whole
    assert check_plain(dumps.plain, 7).to_dict() == whole
    for seed in range(3):
        assert feed_randomly(PgPlainChecker(), dumps.plain, seed).to_dict() == whole


def restricted(plain: bytes) -> bytes:
    """The dump as 15.14+ writes it (already so from this server if it is 15.14 or newer)."""
    if b"\n\\restrict " in plain:
        return plain
    head = b"--\n-- PostgreSQL database dump\n--\n\n"
    assert plain.startswith(head)
    return head + b"\\restrict K3y\n\n" + plain[len(head) :] + b"\\unrestrict K3y\n\n"


def key_of(plain: bytes) -> bytes:
    at = plain.index(b"\n\\restrict ") + 11
    return plain[at : plain.index(b"\n", at)]


def test_plain_truncation_fails_everywhere_before_the_end(dumps: Dumps) -> None:
    data = restricted(dumps.plain)
    last_line_end = data.rindex(b"\\unrestrict ")
    last_line_end = data.index(b"\n", last_line_end) + 1
    for i in range(200):
        cut = i * len(data) // 200
        assert not check_plain(data[:cut]).ok, cut
    for cut in range(data.rindex(b"-- PostgreSQL database dump complete") - 3, last_line_end - 1):
        assert not check_plain(data[:cut]).ok, (cut, data[cut - 20 : cut])
    assert check_plain(data[: last_line_end - 1]).ok  # only the final newline is missing
    assert check_plain(data[:last_line_end]).ok
    copy = data.index(b"COPY public.big")
    assert "inside the COPY data of public.big" in check_plain(data[: copy + 5000]).errors[0]


def test_plain_restrict_keys(dumps: Dumps) -> None:
    data = restricted(dumps.plain)
    key = key_of(data)
    assert check_plain(data).ok
    other_key = key[:-1] + (b"Y" if key.endswith(b"Z") else b"Z")  # the key is random
    other = data.replace(b"\\unrestrict " + key, b"\\unrestrict " + other_key)
    assert "differs" in check_plain(other).errors[0]
    no_unrestrict = data.replace(b"\\unrestrict " + key + b"\n", b"")
    assert "has no \\unrestrict" in check_plain(no_unrestrict).errors[0]
    no_restrict = data.replace(b"\\restrict " + key + b"\n", b"")
    assert "without a \\restrict" in check_plain(no_restrict).errors[0]
    neither = no_restrict.replace(b"\\unrestrict " + key + b"\n", b"")  # pg_dump before 15.14
    result = check_plain(neither)
    assert result.ok, result.errors
    assert "restrict" not in result.facts
    after = data + b"SELECT 1;\n"
    assert "a statement after \\unrestrict" in check_plain(after).errors[0]


def test_plain_needs_its_completion_comment(dumps: Dumps) -> None:
    data = restricted(dumps.plain)
    key = key_of(data)
    unwrapped = data.replace(b"\\restrict " + key + b"\n", b"").replace(b"\\unrestrict " + key + b"\n", b"")
    assert check_plain(unwrapped).ok
    for script in (unwrapped, data):
        gone = script.replace(b"-- PostgreSQL database dump complete\n", b"")
        error = check_plain(gone).errors[0]
        if script is data:
            assert "\\unrestrict before the '-- PostgreSQL database dump complete' comment" in error
        else:
            assert "no '-- PostgreSQL database dump complete' comment at the end" in error
    trailing_sql = unwrapped + b"SELECT 1;\n"
    assert "no '-- PostgreSQL database dump complete'" in check_plain(trailing_sql).errors[0]
    assert check_plain(data + b"--\n-- a comment\n\n").ok
    assert check_plain(unwrapped + b"--\n-- a comment\n\n").ok


def test_plain_crlf_line_ends(dumps: Dumps) -> None:
    crlf = dumps.plain.replace(b"\n", b"\r\n")
    result = check_plain(crlf)
    assert_counts(result, dumps)
    assert feed_randomly(PgPlainChecker(), crlf, 5).to_dict() == result.to_dict()


def test_plain_copy_terminator_cases() -> None:
    head = b"--\n-- PostgreSQL database dump\n--\n\n"
    tail = b"\n--\n-- PostgreSQL database dump complete\n--\n\n"
    entry = b"--\n-- Data for Name: t; Type: TABLE DATA; Schema: s; Owner: o\n--\n\n"
    rows = b"1\t\\\\.\n2\tx\\.y\n\\\\.\n"  # "\\." and "x\.y" are data, not the end
    script = head + entry + b"COPY s.t (a, b) FROM stdin;\n" + rows + b"\\.\n" + tail
    for chunk in (None, 1, 2, 3):
        result = check_plain(script, chunk)
        assert result.ok, result.errors
        assert result.stats["tables"] == {"s.t": 3}
    empty = head + entry + b"COPY s.t (a) FROM stdin;\n\\.\n" + tail
    assert check_plain(empty, 1).stats["tables"] == {"s.t": 0}
    assert "not a pg_dump plain-format header" in check_plain(b"-- MySQL dump 10.13\n").errors[0]
    assert "empty stream" in check_plain(b"").errors[0]


# -- registry, sniffing, describe ------------------------------------------------------------------


def test_sniff_and_registry(dumps: Dumps) -> None:
    mysql = SQLDUMP_FIXTURE.read_bytes()[: registry.SNIFF_BYTES]
    assert sniff(dumps.pipe) and not sniff(dumps.plain) and not sniff(mysql)
    assert not sniff(b"PGDMP-notes.txt" + bytes(85) + b"0000644\x00")  # a tar member's name
    assert sniff_plain(dumps.plain) and not sniff_plain(dumps.pipe) and not sniff_plain(mysql)
    assert sniff_plain(dumps.plain.replace(b"\n", b"\r\n"))
    assert registry.sniff(dumps.pipe[: registry.SNIFF_BYTES]) == "pg-custom"
    assert registry.sniff(dumps.zlib[: registry.SNIFF_BYTES]) == "pg-custom"
    assert registry.sniff(dumps.plain[: registry.SNIFF_BYTES]) == "pg-plain"
    assert registry.sniff(mysql) == "sql-dump"
    assert isinstance(registry.checker_for("pg-custom"), PgCustomChecker)
    assert isinstance(registry.checker_for("pg-plain"), PgPlainChecker)
    assert list(registry.FORMATS).index("pg-custom") < list(registry.FORMATS).index("sql-dump")


def test_describe(dumps: Dumps) -> None:
    lines = registry.describe("pg-custom", check(dumps.pipe))
    text = "\n".join(lines)
    assert lines[0].startswith("pg_dump custom archive 1.14.0 of database shop")
    assert "data offsets not set (written to a pipe)" in text
    assert "status: OK" in text and "public.big" in text and "app.counter = 42" in text
    assert "triggers: app.notes notes_touch" in text
    bad = describe(check(dumps.file[:-10]))
    assert "status: FAILED" in bad and any(line.startswith("error: truncated") for line in bad)
    plain = "\n".join(registry.describe("pg-plain", check_plain(dumps.plain)))
    assert "pg_dump plain SQL script" in plain and "status: OK" in plain
