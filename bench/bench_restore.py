"""Restore and drill throughput for a MySQL dump: `backupd restore` (zstd decompressed on the fly, piped into
the client) against the floor, `mariadb db < dump.sql` from an uncompressed file; then `backupd drill`.

    python bench/bench_restore.py [SIZE_MB]      (default 500)

Data: one InnoDB table filled server-side from MariaDB's sequence engine, dumped by a real `backupd run`.
Targets are separate throwaway servers, so neither load warms the other's buffer pool. Goal: restore at
most 1.1x the plain client load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupd.engine.compression import iter_chunks, open_decompressed
from backupd.lab.content import write_config, write_secret
from backupd.scratch.mariadb import MariaDB

ROW_BYTES = 300  # roughly, per dumped row below


def backupd(cfg: Path, *args: str, env: dict[str, str] | None = None) -> float:
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"backupd {' '.join(args)} failed: {out.stderr.strip()}")
    return time.monotonic() - began


def plain_load(target: MariaDB, plain: Path) -> float:
    target.execute("CREATE DATABASE plain")
    began = time.monotonic()
    with plain.open("rb") as fh:
        subprocess.run(["mariadb", f"--defaults-extra-file={target.option_file}", "plain"], stdin=fh, check=True)
    return time.monotonic() - began


def backupd_restore(target: MariaDB, cfg: Path, base: Path, rows: int) -> float:
    env = {"BACKUPD_RESTORE_PASSWORD_FILE": str(write_secret(base / "t.pw", target.root_password))}
    took = backupd(cfg, "restore", "mysql", "--to", f"mysql://root@{target.host}:{target.port}/restored", env=env)
    n = target.execute("SELECT COUNT(*) FROM restored.t")[0][0]
    assert int(n) == rows, (n, rows)
    return took


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    base = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    plain = base / "dump.sql"
    with MariaDB(base) as src:
        print(f"generating ~{size_mb} MB ({rows} rows) ...", flush=True)
        src.execute(
            "CREATE DATABASE bench; CREATE TABLE bench.t (id bigint PRIMARY KEY, a varchar(255), b int,"
            " c datetime) ENGINE=InnoDB;"
        )
        step = 500_000
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            src.execute(
                "INSERT INTO t SELECT seq, CONCAT(MD5(seq), REPEAT(SHA1(seq), 5)), seq % 1000,"
                f" '2025-01-01' + INTERVAL seq SECOND FROM seq_{lo + 1}_to_{hi};",
                database="bench",
                timeout=3600,
            )
        cfg = write_config(
            base / "cfg",
            {
                "mysql": {
                    "type": "mysql",
                    "schedule": "@daily",
                    "host": src.host,
                    "port": src.port,
                    "user": "root",
                    "password_file": str(write_secret(base / "src.pw", src.root_password)),
                    "databases": ["bench"],
                }
            },
        )
        dump_s = backupd(cfg, "run", "mysql")
    artifact = next((base / "cfg" / "store" / "mysql").glob("*/bench.sql.*"))
    _, stream = open_decompressed(artifact)
    with stream, plain.open("wb") as fh:
        for chunk in iter_chunks(stream):
            fh.write(chunk)
    raw = plain.stat().st_size
    print(f"dump: {raw / 2**20:.0f} MiB raw, {artifact.stat().st_size / 2**20:.0f} MiB stored, {dump_s:.1f}s")

    # Each load gets a fresh server, shut down (its dirty pages flushed) and the disk synced before the next
    # one starts, and the order alternates: a load must not pay for the previous one's background writes.
    times: dict[str, list[float]] = {"plain": [], "backupd": []}
    for kind in ("plain", "backupd", "backupd", "plain"):
        os.sync()
        with MariaDB(base) as target:
            took = plain_load(target, plain) if kind == "plain" else backupd_restore(target, cfg, base, rows)
        times[kind].append(took)
        print(f"  {kind:8s} {took:6.1f}s", flush=True)
    os.sync()
    drill_s = backupd(cfg, "drill", "mysql")

    base_s, restore_s = min(times["plain"]), min(times["backupd"])
    print(f"mariadb < dump.sql   {base_s:8.1f}s  {raw / 2**20 / base_s:6.1f} MiB/s  (best of 2)")
    rate = raw / 2**20 / restore_s
    print(f"backupd restore      {restore_s:8.1f}s  {rate:6.1f} MiB/s  ratio {restore_s / base_s:.2f}x  (best of 2)")
    print(f"backupd drill        {drill_s:8.1f}s  (scratch server start + verify + restore + counts)")
    subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
