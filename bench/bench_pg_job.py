"""Wall time and peak memory of `backupd run` on a PostgreSQL job, beside the shell commands it replaces.

    python bench/bench_pg_job.py [DUMP_MB] [--runs N] [--compare CHECKOUT]

DUMP_MB (default 500): the custom archive is at least this big. Starts a scratch PostgreSQL, generates two
databases with generate_series (a small one, DUMP_MB / 10, and one whose `pg_dump --format=custom
--compress=0` output is about DUMP_MB), then runs, interleaved, N rounds (default 5) of:
  pg_dump -Fc --compress=0 > /dev/null           (the dump alone, for the record)
  pg_dump -Fc --compress=0 | zstd -3 > f         (what backupd does, minus verification)
  backupd run                                    (zstd + sha256 + pg-custom check counting every row + commit,
                                                  plus the globals and the database's settings)
  backupd run from CHECKOUT                      (with --compare: another tree, e.g. before a change)
and once `pg_dump -Fc -f f` (pg_dump's own zlib: about 3x slower, never the faster one). It prints the
median and the best of each, backupd's median over the faster compressing command's (target <= 1.05x),
the load average before and after (the machine may be shared: the interleaving spreads the load over all
commands alike) and backupd's peak RSS (VmHWM; target < 100 MB, the same for the small and the large
database). The `backupd run` under test is the one on this process's path (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backupd.lab.content import write_config, write_secret
from backupd.scratch.postgres import Postgres
from backupd.sources.postgresql.client import conninfo, passfile_text

ROW_BYTES = 232  # COPY text per row of the table below, about


def generate(pg: Postgres, database: str, mb: int) -> int:
    """Rows of hex hashes (about 2:1 for zstd, like real text) and a jsonb column, one INSERT per 1M rows."""
    rows = max(1, mb * 1_000_000 // ROW_BYTES)
    pg.execute(f"CREATE DATABASE {database}")
    pg.execute("CREATE TABLE events (id bigint PRIMARY KEY, kind int, title text, body text, attrs jsonb)", database)
    step = 1_000_000
    for start in range(1, rows + 1, step):
        end = min(rows, start + step - 1)
        pg.execute(
            "INSERT INTO events SELECT i, i % 97, 'event ' || i || ': it''s \"quoted\"', "
            "md5(i::text) || ' ' || md5((i * 3)::text) || ' ' || md5((i * 7)::text) || E'\\\\path '"
            " || md5(random()::text), "
            "jsonb_build_object('n', i, 'tag', md5((i % 1000)::text)) "
            f"FROM generate_series({start}, {end}) i",
            database,
            timeout=3600,
        )
    pg.execute("VACUUM ANALYZE events", database, timeout=3600)
    return rows


def timed_shell(script: str, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, env=env)
    return time.monotonic() - t0


def peak_rss_kb(pid: int, stop: threading.Event, out: list[int]) -> None:
    path = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[0] = max(out[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.05)


def run_backupd(cfg: Path, job: str, tree: str | None = None) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "run", job],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = [0]
    stop = threading.Event()
    t = threading.Thread(target=peak_rss_kb, args=(proc.pid, stop, peak), daemon=True)
    t.start()
    _, err = proc.communicate()
    elapsed = time.monotonic() - t0
    stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"backupd run failed: {err}")
    return elapsed, peak[0]


def raw_bytes(cfg: Path, job: str) -> tuple[int, int]:
    """(uncompressed, stored) bytes of the newest backup's database artifact."""
    store = cfg.parent / "store" / job
    newest = sorted(p for p in store.iterdir() if not p.name.startswith("."))[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == "pg-custom")
    return int(art["raw_bytes"]), int(art["bytes"])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mb", nargs="?", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare", metavar="CHECKOUT", help="also time `backupd run` from this tree")
    args = ap.parse_args()
    mb, small_mb = args.mb, max(1, args.mb // 10)
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp, Postgres(Path(tmp) / "db") as pg:
        base = Path(tmp)
        print(f"generating ~{small_mb} MB and ~{mb} MB databases ...", flush=True)
        t0 = time.monotonic()
        rows = {"small": generate(pg, "bench_small", small_mb), "large": generate(pg, "bench_large", mb)}
        print(f"  {rows['small']} + {rows['large']} rows generated in {time.monotonic() - t0:.1f}s", flush=True)
        passfile = base / "pgpass"
        passfile.write_text(passfile_text(pg.host, pg.port, pg.superuser, pg.password))
        passfile.chmod(0o600)
        env = {**os.environ, "PGPASSFILE": str(passfile)}
        pw = write_secret(base / "pw", pg.password)
        common = {"type": "postgresql", "schedule": "@daily", "host": pg.host, "port": pg.port,
                  "user": pg.superuser, "password_file": str(pw)}  # fmt: skip
        cfg = write_config(
            base / "cfg",
            {
                "small": {**common, "databases": ["bench_small"]},
                "large": {**common, "databases": ["bench_large"]},
            },
        )
        pg_dump = f"{pg.tool('pg_dump')} '--dbname={conninfo(pg.host, pg.port, pg.superuser, 'bench_large')}'"
        out = base / "out"
        out.mkdir()
        timed_shell(f"{pg_dump} -Fc --compress=0 > /dev/null", env)  # warm shared buffers and the page cache
        results: dict[str, list[float]] = {k: [] for k in ("raw", "zlib", "zstd", "backupd", "compare")}
        peaks: dict[str, list[int]] = {"small": [], "large": []}
        load_before = load()
        results["zlib"].append(timed_shell(f"{pg_dump} -Fc -f {out}/f.pgdump", env))
        for i in range(args.runs):
            results["raw"].append(timed_shell(f"{pg_dump} -Fc --compress=0 > /dev/null", env))
            results["zstd"].append(timed_shell(f"{pg_dump} -Fc --compress=0 | zstd -q -3 > {out}/f.zst", env))
            elapsed, peak = run_backupd(cfg, "large")
            results["backupd"].append(elapsed)
            peaks["large"].append(peak)
            if args.compare:
                results["compare"].append(run_backupd(cfg, "large", args.compare)[0])
            if i < 2:
                peaks["small"].append(run_backupd(cfg, "small")[1])
            print(f"  round {i + 1}: zstd {results['zstd'][-1]:.2f} s, backupd {elapsed:.2f} s"
                  + (f", compare {results['compare'][-1]:.2f} s" if args.compare else "")
                  + f"  (load {load()})", flush=True)  # fmt: skip
        raw, stored = raw_bytes(cfg, "large")
        small_raw, _ = raw_bytes(cfg, "small")
        med = {k: statistics.median(v) for k, v in results.items() if v}
        best = {k: min(v) for k, v in results.items() if v}
        faster = min(med["zlib"], med["zstd"])
        print(f"custom archive {raw / 1e6:.0f} MB uncompressed ({rows['large']} rows), stored {stored / 1e6:.0f} MB "
              f"(zstd -3, {raw / max(1, stored):.2f}:1); {args.runs} interleaved rounds, {os.cpu_count()} cores, "
              f"load average {load_before} before, {load()} after")  # fmt: skip
        print("                                            median     best")
        rows_out = [("raw", "pg_dump -Fc --compress=0 > /dev/null"), ("zlib", "pg_dump -Fc -f f (once)"),
                    ("zstd", "pg_dump -Fc --compress=0 | zstd -3 > f"), ("backupd", "backupd run")]  # fmt: skip
        if args.compare:
            rows_out.append(("compare", f"backupd run from {args.compare}"))
        for key, label in rows_out:
            print(f"  {label:<40} {med[key]:7.2f} s {best[key]:7.2f} s")
        print(f"  backupd rate                 = {raw / 1e6 / med['backupd']:.0f} MB/s (median)")
        print(f"  backupd / faster of the two  = {med['backupd'] / faster:.2f}x median, "
              f"{best['backupd'] / min(best['zlib'], best['zstd']):.2f}x best  (target <= 1.05)")  # fmt: skip
        if args.compare:
            print(f"  compare / zstd pipeline      = {med['compare'] / med['zstd']:.2f}x median")
        print(
            f"  backupd peak RSS             = {max(peaks['small']) / 1024:.0f} MB at {small_raw / 1e6:.0f} MB, "
            f"{max(peaks['large']) / 1024:.0f} MB at {raw / 1e6:.0f} MB  (target < 100, flat)"
        )


if __name__ == "__main__":
    main()
