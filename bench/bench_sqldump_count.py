"""CPU cost of SqlDumpChecker's exact row counting on a WordPress-like dump.

Usage: python bench/bench_sqldump_count.py [SIZE_MB] [--styles lines,one-line,per-row] [--compare]

SIZE_MB (default 500) of dump text is made from a ~64 MB generated base repeated (Gutenberg posts with
apostrophes, HTML attributes in double quotes, escaped newlines, a few backslashes and a few "),(" inside
strings; postmeta/options with serialized PHP; comments; numeric-only tables), in one of the layouts:

  lines     MariaDB's mariadb-dump (MDEV-25152): `INSERT INTO t VALUES` then one row per line
  one-line  MySQL's mysqldump and older MariaDB: each extended INSERT on one line
  per-row   --skip-extended-insert: one INSERT per row

The checker is fed 1 MiB chunks; printed: MB/s and CPU seconds per 100 MB (process time of this
process), with bytes.count(b"\\n") over the same chunks as a floor. --compare also times the exact
counting methods that were considered, on whole statements, and the naive `),(` count (wrong).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, not installed

from backupd.formats.sqldump import SqlDumpChecker, rows_in_values

CHUNK = 1 << 20
NET_BUFFER = 1_046_528  # mariadb-dump's default net_buffer_length: where it starts a new INSERT
BASE_SIZE = 64 << 20
HEADER = (
    b"/*M!999999\\- enable the sandbox mode */ \n"
    b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n--\n"
    b"-- Host: localhost    Database: wordpress\n"
    b"-- ------------------------------------------------------\n"
    b"-- Server version\t10.11.19-MariaDB-0+deb12u1\n\n"
)
TRAILER = b"/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;\n\n-- Dump completed on 2025-06-04  3:41:26\n"

WORDS_TEXT = (
    "the a of to and in is it's that for on with as was you're don't can't we've O'Brien's "
    "site WordPress plugin theme block editor post page image gallery update release performance "
    "(see below) (optional) “smart” quotes — dash café naïve 100% $19.99 e-mail user's admin's"
)
WORDS = WORDS_TEXT.split()
_ESC = {0: b"\\0", 10: b"\\n", 13: b"\\r", 92: b"\\\\", 39: b"\\'", 34: b'\\"', 26: b"\\Z"}
_ESC_TABLE = {k: v.decode() for k, v in _ESC.items()}


def sql(value: str) -> bytes:
    """A string literal quoted as mysqldump does (mysql_real_escape_string)."""
    return b"'" + value.translate(_ESC_TABLE).encode() + b"'"


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def post_content(rng: random.Random, i: int) -> str:
    blocks = []
    for _ in range(rng.randint(2, 30)):
        kind = rng.random()
        if kind < 0.7:
            text = " ".join(sentence(rng, rng.randint(6, 25)) for _ in range(rng.randint(1, 5)))
            blocks.append(f"<!-- wp:paragraph -->\n<p>{text}</p>\n<!-- /wp:paragraph -->")
        elif kind < 0.85:
            blocks.append(
                f'<!-- wp:image {{"id":{i},"sizeSlug":"large","linkDestination":"none"}} -->\n'
                f'<figure class="wp-block-image size-large"><img src="https://example.org/wp-content/'
                f'uploads/2024/03/photo-{i}.jpg" alt="" class="wp-image-{i}"/></figure>\n<!-- /wp:image -->'
            )
        elif kind < 0.997:
            blocks.append(f'<!-- wp:heading {{"level":3}} -->\n<h3>{sentence(rng, 5)}</h3>\n<!-- /wp:heading -->')
        else:  # now and then a developer's post: code with backslashes and "),(" (about 5% of posts)
            blocks.append(
                "<!-- wp:code -->\n<pre class=\"wp-block-code\"><code>INSERT INTO t VALUES (1,'a'),(2,'b');\n"
                "C:\\Users\\admin\\site\\wp-config.php</code></pre>\n<!-- /wp:code -->"
            )
    return "\r\n\r\n".join(blocks)


def row_pools(rng: random.Random) -> dict[str, tuple[float, list[bytes]]]:
    """Rows (without their id) per table, with the share of the dump's bytes each table gets."""
    posts = []
    for i in range(400):
        title = sentence(rng, rng.randint(2, 9))
        posts.append(
            b"1,'2024-03-01 10:00:00','2024-03-01 09:00:00',%s,%s,'','publish','open','open','',"
            b"'post-%d','','','2024-03-02 11:00:00','2024-03-02 10:00:00','',0,"
            b"'https://example.org/?p=%d',0,'post','',%d"
            % (sql(post_content(rng, i)), sql(title), i, i, rng.randint(0, 40))
        )
    postmeta = []
    for i in range(3000):
        key, value = rng.choice(
            [
                ("_edit_lock", f"{1700000000 + i}:1"),
                ("_edit_last", "1"),
                ("_thumbnail_id", str(i)),
                ("_wp_attached_file", f"2024/03/photo-{i}.jpg"),
                (
                    "_wp_attachment_metadata",
                    f'a:3:{{s:5:"width";i:1024;s:6:"height";i:768;s:4:"file";s:21:"2024/03/photo-{i}.jpg";}}',
                ),
                ("_yoast_wpseo_metadesc", sentence(rng, 12)),
            ]
        )
        postmeta.append(b"%d,%s,%s" % (rng.randint(1, 9999), sql(key), sql(value)))
    comments = [
        b"%d,%s,'jo@example.org','','192.0.2.%d','2024-03-05 12:00:00','2024-03-05 11:00:00',%s,0,'1',"
        b"'Mozilla/5.0 (X11; Linux x86_64)','comment',0,0"
        % (
            rng.randint(1, 999),
            sql(rng.choice(["Jo O'Neil", "Ann", "Zoë"])),
            i % 250,
            sql(" ".join(sentence(rng, rng.randint(5, 30)) for _ in range(rng.randint(1, 4)))),
        )
        for i in range(1500)
    ]
    options = []
    for i in range(300):
        titles = [sentence(rng, 4) for _ in range(i % 9 + 1)]
        serialized = "".join(f's:5:"title";s:{len(t)}:"{t}";' for t in titles)
        options.append(b"%s,%s,'yes'" % (sql(f"widget_{i}"), sql(f"a:{len(titles)}:{{{serialized}}}")))
    relationships = [b"%d,0" % rng.randint(1, 60) for _ in range(50)]
    orders = [
        b"%d,'2024-03-06 08:00:00',%d,%d.%02d,%d.00,0.00,'wc-completed',%d,0"
        % (
            rng.randint(0, 5),
            rng.randint(1, 9),
            rng.randint(1, 999),
            rng.randint(0, 99),
            rng.randint(0, 20),
            rng.randint(1, 5000),
        )
        for _ in range(200)
    ]
    return {
        "wp_posts": (0.45, posts),
        "wp_postmeta": (0.20, postmeta),
        "wp_comments": (0.15, comments),
        "wp_options": (0.07, options),
        "wp_term_relationships": (0.05, relationships),
        "wp_wc_order_stats": (0.08, orders),
    }


def make_base(style: str, size: int, seed: int = 7) -> tuple[bytes, int]:
    """The INSERT part of a dump of about `size` bytes, and the number of rows in it."""
    rng = random.Random(seed)
    out: list[bytes] = []
    total_rows = 0
    for table, (share, pool) in row_pools(rng).items():
        header = b"INSERT INTO `%s` VALUES" % table.encode()
        budget = int(size * share)
        rowid = 0
        while budget > 0:
            rows, length = [], 0
            while length < NET_BUFFER and length < budget:
                rowid += 1
                row = b"(%d,%s)" % (rowid, pool[rowid % len(pool)])
                rows.append(row)
                length += len(row) + 2
            total_rows += len(rows)
            budget -= length
            if style == "lines":
                out.append(header + b"\n" + b",\n".join(rows) + b";\n")
            elif style == "one-line":
                out.append(header + b" " + b",".join(rows) + b";\n")
            else:
                out.append(b"".join(header + b" " + row + b";\n" for row in rows))
    return b"".join(out), total_rows


def chunks(base: bytes, repeats: int) -> list[bytes]:
    """1 MiB chunks of header + base repeated + trailer (the chunk objects are shared)."""
    pieces = [base[i : i + CHUNK] for i in range(0, len(base), CHUNK)]
    return [HEADER, *pieces * repeats, TRAILER]


def cpu(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, proc = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - proc, out


def bench_style(style: str, size: int) -> None:
    repeats = -(-size // BASE_SIZE)
    base, base_rows = make_base(style, size // repeats)
    data = chunks(base, repeats)
    total = sum(map(len, data))

    def run() -> object:
        checker = SqlDumpChecker()
        for chunk in data:
            checker.feed(chunk)
        return checker.finish()

    best = min((cpu(run) for _ in range(2)), key=lambda r: r[1])
    wall, proc, result = best
    rows = result.stats["rows"]  # type: ignore[attr-defined]
    if not result.ok or rows != base_rows * repeats:  # type: ignore[attr-defined]
        raise SystemExit(f"{style}: wrong result: {rows} rows, expected {base_rows * repeats}")
    _, floor, _ = cpu(lambda: sum(chunk.count(b"\n") for chunk in data))
    mb = total / 1e6
    print(
        f"{style:9} {mb:7.0f} MB {rows:>10} rows  {mb / wall:7.0f} MB/s  "
        f"{proc * 1e8 / total:.3f} CPU s/100 MB   (floor bytes.count: {floor * 1e8 / total:.3f} s/100 MB)"
    )


_UNROLLED = re.compile(rb"'[^'\\]*(?:\\.[^'\\]*)*'", re.S)
_POSSESSIVE = re.compile(rb"'[^'\\]*+(?:\\.[^'\\]*+)*+'", re.S)


def _replace_split(values: bytes) -> int:
    plain = values.replace(b"\\\\", b"").replace(b"\\'", b"")
    return b"".join(plain.split(b"'")[::2]).count(b"(")


METHODS: dict[str, Callable[[bytes], int]] = {
    "regex strip (unrolled)": lambda v: _UNROLLED.sub(b"", v).count(b"("),
    "regex strip (possessive)": lambda v: _POSSESSIVE.sub(b"", v).count(b"("),
    "translate + replace (the checker's)": rows_in_values,
    "replace escapes + split": _replace_split,
    "naive count('),(') + 1 (WRONG)": lambda v: v.count(b"),(") + 1,
}


def compare(size: int) -> None:
    """Each method over the VALUES of every one-line statement (no checker around it)."""
    base, rows = make_base("one-line", min(size, 100 << 20), seed=11)
    values = [line[line.index(b" VALUES ") + 8 :] for line in base.split(b"\n") if line]
    print(f"\nexact methods over one-line statements, {len(base) / 1e6:.0f} MB, {rows} rows:")
    for name, method in METHODS.items():
        _, proc, counted = cpu(lambda m=method: sum(map(m, values)))  # type: ignore[misc]
        note = "" if counted == rows else f"  <- {counted} rows"
        print(f"  {name:36} {proc * 1e8 / len(base):.3f} CPU s/100 MB{note}")
    lines_base, _ = make_base("lines", min(size, 100 << 20), seed=11)
    _, proc, _ = cpu(lambda: (lines_base.count(b"\n"), lines_base.count(b"),("), lines_base.count(b";\n")))
    label = "row-per-line: count \\n ),( ;\\n"
    print(f"  {label:36} {proc * 1e8 / len(lines_base):.3f} CPU s/100 MB")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mb", nargs="?", type=int, default=500)
    parser.add_argument("--styles", default="lines,one-line,per-row")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args(argv)
    size = args.size_mb * 1_000_000
    for style in args.styles.split(","):
        bench_style(style, size)
    if args.compare:
        compare(size)


if __name__ == "__main__":
    main(sys.argv[1:])
