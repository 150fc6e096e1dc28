"""Throughput of PgCustomChecker and PgPlainChecker on large synthesized pg_dump output.

Usage: python bench/bench_pgdump_check.py [SIZE_MB] [--shapes orders,narrow,zlib,plain] [--file DUMP]

The archives are laid out as pg_dump 15 writes them (archive 1.14, one chunk per COPY row when not
compressing, zlib streams cut into chunks of at most 4096 bytes): a ~32 MB base of generated COPY rows,
repeated to SIZE_MB (default 500), fed in 1 MiB slices. Shapes:

  orders  rows of 60 to 200 bytes (ids, timestamps, amounts, a text column), --compress=0
  narrow  rows of 15 to 40 bytes (a link table of two ids and a flag): the most chunks per MB
  zlib    the orders rows compressed as pg_dump does by default (MB/s of archive and of COPY text)
  plain   the orders rows as a --format=plain script

--file times a real dump instead (custom or plain, by its first bytes). Printed: MB/s (wall) and CPU
seconds per 100 MB (process time), with bytes.count(b"\\n") over the same slices as a floor.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, not installed

from backupd.formats.base import CheckResult, FormatChecker
from backupd.formats.pgdump import PgCustomChecker, PgPlainChecker, sniff

SLICE = 1 << 20
BASE_SIZE = 32 << 20
ZLIB_OUT = 4096  # pg_dump's ZLIB_OUT_SIZE: the largest compressed chunk


def pg_int(value: int) -> bytes:
    return bytes([value < 0]) + abs(value).to_bytes(4, "little")


def pg_str(value: str | None) -> bytes:
    if value is None:
        return pg_int(-1)
    raw = value.encode()
    return pg_int(len(raw)) + raw


def archive_head(tables: list[str], level: int) -> bytes:
    """Header and TOC of a 1.14 archive whose data entries are `tables` ("schema.name"), no offsets."""
    out = bytearray(b"PGDMP\x01\x0e\x00\x04\x08\x01" + pg_int(level))
    for v in (0, 0, 12, 1, 2, 124, 0):  # created 2024-03-01 12:00:00
        out += pg_int(v)
    out += pg_str("shop") + pg_str("15.18") + pg_str("15.18") + pg_int(len(tables))
    for dump_id, table in enumerate(tables, 1):
        schema, name = table.split(".")
        fields = [
            pg_int(dump_id), pg_int(1), pg_str("0"), pg_str(str(16384 + dump_id)), pg_str(name),
            pg_str("TABLE DATA"), pg_int(3), pg_str(""), pg_str(""),
            pg_str(f"COPY {schema}.{name} (id, a, b) FROM stdin;\n"), pg_str(schema), pg_str(""),
            pg_str(""), pg_str("postgres"), pg_str("false"), pg_str(None), b"\x01" + bytes(8),
        ]  # fmt: skip
        out += b"".join(fields)
    return bytes(out)


def chunk(payload: bytes) -> bytes:
    return pg_int(len(payload)) + payload


def order_rows(rng: random.Random, size: int) -> list[bytes]:
    words = b"paid refunded shipped pending note gift express priority returned damaged".split()
    rows, total, i = [], 0, 0
    while total < size:
        i += 1
        note = b" ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
        row = b"%d\t%d\t2024-03-%02d %02d:%02d:%02d+00\t%s\t%d.%02d\t%s\n" % (
            i, rng.randint(1, 99999), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
            rng.randint(0, 59), rng.choice(words), rng.randint(0, 999), rng.randint(0, 99), note or b"\\N",
        )  # fmt: skip
        rows.append(row)
        total += len(row)
    return rows


def narrow_rows(rng: random.Random, size: int) -> list[bytes]:
    rows, total, i = [], 0, 0
    while total < size:
        i += 1
        row = b"%d\t%d\t%s\n" % (i, rng.randint(1, 10**9), rng.choice((b"t", b"f")))
        rows.append(row)
        total += len(row)
    return rows


def zlib_chunks(text: bytes) -> bytes:
    """`text` as one zlib stream in chunks of at most ZLIB_OUT bytes, as pg_dump writes a block."""
    z = zlib.compress(text, 6)
    return b"".join(chunk(z[i : i + ZLIB_OUT]) for i in range(0, len(z), ZLIB_OUT))


def slices(data: bytes) -> list[bytes]:
    return [data[i : i + SLICE] for i in range(0, len(data), SLICE)]


def custom_stream(rows: list[bytes], repeats: int, compress: bool) -> tuple[list[bytes], int, int]:
    """1 MiB slices of an archive (slice objects shared between repeats), its row count, COPY bytes."""
    text = b"".join(rows)
    if not compress:  # one table whose rows are the base `repeats` times
        head = archive_head(["public.orders"], 0) + b"\x01" + pg_int(1)
        base = b"".join(map(chunk, rows))
        tail = chunk(b"\\.\n\n\n") + pg_int(0)
        return [head, *slices(base) * repeats, tail], len(rows) * repeats, len(text) * repeats
    # one zlib stream per block: `repeats` tables with the same rows
    tables = [f"public.orders_{i}" for i in range(repeats)]
    out = [archive_head(tables, -1)]
    body = slices(zlib_chunks(text + b"\\.\n\n\n") + pg_int(0))
    for dump_id in range(1, repeats + 1):
        out += [b"\x01" + pg_int(dump_id), *body]
    return out, len(rows) * repeats, len(text) * repeats


def plain_stream(rows: list[bytes], repeats: int) -> tuple[list[bytes], int, int]:
    head = (
        b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n-- Dumped from database version 15.18\n"
        b"-- Dumped by pg_dump version 15.18\n\n--\n-- Data for Name: orders; Type: TABLE DATA; "
        b"Schema: public; Owner: postgres\n--\n\nCOPY public.orders (id, a, b) FROM stdin;\n"
    )
    tail = b"\\.\n\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc123\n\n"
    base = b"".join(rows)
    return [head, *slices(base) * repeats, tail], len(rows) * repeats, len(base) * repeats


def timed(pieces: list[bytes], make: Callable[[], FormatChecker]) -> tuple[float, float, CheckResult]:
    best: tuple[float, float, CheckResult] | None = None
    for _ in range(2):
        checker = make()
        wall, cpu = time.perf_counter(), time.process_time()
        for piece in pieces:
            checker.feed(piece)
        result = checker.finish()
        run = (time.perf_counter() - wall, time.process_time() - cpu, result)
        if best is None or run[1] < best[1]:
            best = run
    assert best is not None
    return best


def report(label: str, pieces: list[bytes], make: Callable[[], FormatChecker], rows: int | None, text: int) -> None:
    wall, cpu, result = timed(pieces, make)
    if not result.ok or (rows is not None and result.stats["rows"] != rows):
        raise SystemExit(f"{label}: wrong result: {result.errors} {result.stats.get('rows')} rows, expected {rows}")
    total = sum(map(len, pieces))
    floor = time.process_time()
    for piece in pieces:
        piece.count(b"\n")
    floor = time.process_time() - floor
    mb = total / 1e6
    extra = f", COPY text {text / 1e6 / wall:5.0f} MB/s" if text != total else ""
    print(
        f"{label:7} {mb:6.0f} MB {result.stats['rows']:>10} rows  {mb / wall:6.0f} MB/s{extra}  "
        f"{cpu * 1e8 / total:.3f} CPU s/100 MB   (floor bytes.count: {floor * 1e8 / total:.3f})"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mb", nargs="?", type=int, default=500)
    parser.add_argument("--shapes", default="orders,narrow,zlib,plain")
    parser.add_argument("--file", type=Path, help="time this pg_dump output instead")
    args = parser.parse_args(argv)
    if args.file:
        data = args.file.read_bytes()
        make: Callable[[], FormatChecker] = PgCustomChecker if sniff(data) else PgPlainChecker
        report(args.file.name[:7], slices(data), make, None, len(data))
        return
    size = args.size_mb * 1_000_000
    repeats = max(1, -(-size // BASE_SIZE))
    rng = random.Random(7)
    orders = order_rows(rng, size // repeats)
    for shape in args.shapes.split(","):
        if shape == "orders":
            pieces, rows, text = custom_stream(orders, repeats, compress=False)
        elif shape == "narrow":
            pieces, rows, text = custom_stream(narrow_rows(rng, size // repeats), repeats, compress=False)
        elif shape == "zlib":
            pieces, rows, text = custom_stream(orders, repeats, compress=True)
        elif shape == "plain":
            pieces, rows, text = plain_stream(orders, repeats)
        else:
            raise SystemExit(f"unknown shape {shape!r}")
        report(shape, pieces, PgPlainChecker if shape == "plain" else PgCustomChecker, rows, text)


if __name__ == "__main__":
    main(sys.argv[1:])
