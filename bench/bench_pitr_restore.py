"""Restore to a point: `backupd restore --until` (base dump + the segments' selected transactions through
`mariadb-binlog - | mariadb`) against the same work by hand (`mariadb < dump.sql`, then `mariadb-binlog
--start-position=BASE server-binlogs | mariadb`); and the bytes per day of binlog at 1% daily churn against
daily full dumps, computed from the measured run.

    python bench/bench_pitr_restore.py [ROWS] [CHANGED_ROWS]     (default 300000 and 150000)

Run from the repository root (it commits the server's closed binlogs as segments with the helper in
tests/pitr/, as the tests do). Goal: restore --until at most 1.1x by hand. BENCH_ROUNDS (default 2) rounds,
each on a fresh database, who goes first alternating and 2 s of settling before each restore (the servers'
background purge after the workload or a DROP would otherwise always hit the first); it prints each round,
the medians and the best, and the fixed part of restore --until (its wall time minus the base load and
the replay it reports). BENCH_PROFILE=1 first runs one restore in-process under cProfile.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupd.engine.compression import iter_chunks, open_decompressed
from backupd.lab.content import write_config, write_secret
from backupd.scratch.mariadb import MariaDB
from backupd.store.segments import SegmentStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pitr.server_segments import closed_binlogs, commit_closed_binlogs

LOG_BIN = ["--log-bin=mariadb-bin", "--binlog-format=ROW", "--server-id=1"]
BATCH = 50  # rows changed per transaction
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def backupd(cfg: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "backupd", "--config", str(cfg), *args], capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise SystemExit(f"backupd {' '.join(args)} failed: {out.stderr.strip()}")
    return time.monotonic() - began, out.stdout


def by_hand(tb: MariaDB, plain: Path, start: int, stop: str, files: list[Path]) -> tuple[float, float]:
    """`mariadb shop < dump.sql`, then `mariadb-binlog --start-position --stop-datetime FILES | mariadb`."""
    tb.execute("CREATE DATABASE shop")
    began = time.monotonic()
    with plain.open("rb") as fh:
        subprocess.run(["mariadb", f"--defaults-extra-file={tb.option_file}", "shop"], stdin=fh, check=True)
    loaded = time.monotonic()
    binlog = subprocess.Popen(
        ["mariadb-binlog", f"--start-position={start}", "--database=shop", f"--stop-datetime={stop}",
         *map(str, files)],
        stdout=subprocess.PIPE, env={**os.environ, "TZ": "UTC"},
    )
    subprocess.run(["mariadb", f"--defaults-extra-file={tb.option_file}", "--binary-mode"], stdin=binlog.stdout,
                   check=True)
    assert binlog.wait() == 0
    return loaded - began, time.monotonic() - loaded


def checksum(server: MariaDB, db: str) -> str:
    return server.execute(f"CHECKSUM TABLE {db}.t")[0][1]


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    changed = int(sys.argv[2]) if len(sys.argv) > 2 else 150_000
    base = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
    with MariaDB(base_dir=base / "src", extra_args=LOG_BIN) as src, MariaDB(base_dir=base / "a") as ta, \
            MariaDB(base_dir=base / "b") as tb:  # fmt: skip
        src.execute("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v INT, s VARCHAR(80));")
        fill = "CONCAT(MD5(seq), SUBSTRING(MD5(seq + 1), 1, 16))"  # compresses like real text, about 2.5x
        src.execute(f"INSERT INTO t SELECT seq, seq % 1000, {fill} FROM seq_1_to_{rows};", database="shop")
        pw = write_secret(base / "root.pw", src.root_password)
        job = {"type": "mysql", "schedule": "@daily", "host": src.host, "port": src.port, "user": "root",
               "password_file": str(pw), "databases": ["shop"],
               "pitr": {"enabled": True, "server_id": 4001, "window": "7d"}}
        cfg = write_config(base / "etc", {"shop": job})
        backupd(cfg, "run", "shop")
        store = base / "etc" / "store"
        (bid,) = [p.name for p in (store / "shop").iterdir() if p.name[0].isdigit()]
        man = json.loads((store / "shop" / bid / "manifest.json").read_text())
        art = man["artifacts"][0]
        pos = art["binlog_position"]
        # the churn: updates of BATCH rows per transaction, spread over the table
        n_tx = changed // BATCH
        step = max(1, rows // n_tx)
        sql = "".join(
            f"UPDATE t SET v = v + 1, s = CONCAT('u', SUBSTRING(s, 2)) WHERE id > {i * step % rows}"
            f" AND id <= {i * step % rows + BATCH};"
            for i in range(n_tx)
        )
        began = time.monotonic()
        src.execute(sql, database="shop", timeout=3600)
        print(f"workload: {n_tx} transactions, {n_tx * BATCH} rows changed in {time.monotonic() - began:.1f}s")
        expected = checksum(src, "shop")
        time.sleep(1.1)
        stop = time.gmtime(time.time())
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", stop)
        time.sleep(1.1)
        src.execute("UPDATE t SET v = -1 WHERE id = 1", database="shop")  # after the target: not restored
        segs = commit_closed_binlogs(src, SegmentStore(store, "shop"), "shop", per_segment=500)
        files = [p for p in closed_binlogs(src) if p.name >= pos["file"]]
        binlog_raw = sum(int(s.manifest["raw_bytes"]) for s in segs)
        binlog_stored = sum(int(s.manifest["bytes"]) for s in segs)

        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            from backupd.cli import main as cli_main
            os.environ["BACKUPD_RESTORE_PASSWORD_FILE"] = str(write_secret(base / "a0.pw", ta.root_password))
            prof = cProfile.Profile()
            prof.runcall(cli_main, ["--config", str(cfg), "restore", "shop", "--until", until, "--to",
                                    f"mysql://root@{ta.host}:{ta.port}/prof"])
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            ta.execute("DROP DATABASE prof")  # the measured restore below gets the server as by hand does
        # by hand: the plain dump, then the server's binlog files from the base position
        plain = base / "dump.sql"
        with open_decompressed(store / "shop" / bid / art["file"])[1] as fh, plain.open("wb") as out_fh:
            for chunk in iter_chunks(fh):
                out_fh.write(chunk)
        env = {"BACKUPD_RESTORE_PASSWORD_FILE": str(write_secret(base / "a.pw", ta.root_password))}
        stop_dt = time.strftime("%Y-%m-%d %H:%M:%S", stop)
        ours: list[float] = []
        fixed: list[float] = []  # start-up, config, plan, first pass over the segments, target checks
        hand: list[tuple[float, float]] = []
        for n in range(ROUNDS):  # each on a fresh database; who goes first alternates, so the servers'
            if n:  # background work (purge after the workload or a DROP, page flushing) hits both alike
                ta.execute("DROP DATABASE shop")
                tb.execute("DROP DATABASE shop")
            for side in ("ours", "hand") if n % 2 == 0 else ("hand", "ours"):
                time.sleep(2)
                if side == "ours":
                    took, out = backupd(cfg, "restore", "shop", "--until", until, "--to",
                                        f"mysql://root@{ta.host}:{ta.port}/shop", env=env)
                    assert checksum(ta, "shop") == expected, "backupd restore --until: wrong rows"
                    ours.append(took)
                    phases = [float(x) for x in re.findall(r"\(([0-9.]+)s\)$", out, re.M)]  # base load, replay
                    fixed.append(took - sum(phases))
                    print(f"round {n + 1}: backupd restore --until {took:.2f}s (outside the base load and the"
                          f" replay: {fixed[-1]:.2f}s):", "; ".join(out.strip().splitlines()))
                else:
                    hand.append(by_hand(tb, plain, pos["pos"], stop_dt, files))
                    assert checksum(tb, "shop") == expected, "by hand: wrong rows"
                    print(f"round {n + 1}: by hand {sum(hand[-1]):.2f}s (mariadb < dump.sql {hand[-1][0]:.2f}s,"
                          f" mariadb-binlog | mariadb {hand[-1][1]:.2f}s)")
        took_a = min(ours)
        took_b = min(sum(h) for h in hand)
        med_a, med_b = statistics.median(ours), statistics.median(sum(h) for h in hand)
        print(f"median of {ROUNDS}: restore --until {med_a:.2f}s, by hand {med_b:.2f}s, ratio {med_a / med_b:.2f}x;"
              f" fixed part of restore --until {statistics.median(fixed):.2f}s")

        dump_stored = int(art["bytes"])
        per_row = binlog_stored / (n_tx * BATCH)
        daily_binlog = per_row * rows * 0.01
        daily_raw = binlog_raw / (n_tx * BATCH) * rows * 0.01
        print(f"table: {rows} rows; dump {art['raw_bytes'] / 1e6:.1f} MB raw, {dump_stored / 1e6:.2f} MB stored")
        print(f"binlog: {len(segs)} segments, {binlog_raw / 1e6:.1f} MB raw, {binlog_stored / 1e6:.2f} MB stored"
              f" ({per_row:.1f} stored bytes per changed row)")
        print(f"best of {ROUNDS}: restore --until: {took_a:.2f}s   by hand (mariadb < dump.sql;"
              f" mariadb-binlog | mariadb): {took_b:.2f}s"
              f"   ratio {took_a / took_b:.2f}x (goal <= 1.1x)")
        print(f"per day at 1% churn ({rows // 100} rows changed): binlog {daily_binlog / 1e6:.3f} MB vs a full"
              f" dump {dump_stored / 1e6:.2f} MB ({dump_stored / daily_binlog:.0f}x less; uncompressed"
              f" {daily_raw / 1e6:.2f} MB vs {int(art['raw_bytes']) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
