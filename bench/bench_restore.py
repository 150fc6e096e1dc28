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

from backupd.compression import iter_chunks, open_decompressed
from backupd.sandbox import write_config, write_secret
from backupd.scratch import MariaDB

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


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    base = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    with MariaDB(base) as src, MariaDB(base) as t1, MariaDB(base) as t2:
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
        plain = base / "dump.sql"
        _, stream = open_decompressed(artifact)
        with stream, plain.open("wb") as fh:
            for chunk in iter_chunks(stream):
                fh.write(chunk)
        raw = plain.stat().st_size
        print(f"dump: {raw / 2**20:.0f} MiB raw, {artifact.stat().st_size / 2**20:.0f} MiB stored, {dump_s:.1f}s")

        t1.execute("CREATE DATABASE plain")
        began = time.monotonic()
        with plain.open("rb") as fh:
            subprocess.run(["mariadb", f"--defaults-extra-file={t1.option_file}", "plain"], stdin=fh, check=True)
        base_s = time.monotonic() - began
        plain.unlink()

        env = {"BACKUPD_RESTORE_PASSWORD_FILE": str(write_secret(base / "t2.pw", t2.root_password))}
        restore_s = backupd(cfg, "restore", "mysql", "--to", f"mysql://root@{t2.host}:{t2.port}/restored", env=env)
        n = t2.execute("SELECT COUNT(*) FROM restored.t")[0][0]
        assert int(n) == rows, (n, rows)
        drill_s = backupd(cfg, "drill", "mysql")

    print(f"mariadb < dump.sql   {base_s:8.1f}s  {raw / 2**20 / base_s:6.1f} MiB/s")
    rate = raw / 2**20 / restore_s
    print(f"backupd restore      {restore_s:8.1f}s  {rate:6.1f} MiB/s  ratio {restore_s / base_s:.2f}x")
    print(f"backupd drill        {drill_s:8.1f}s  (scratch server start + verify + restore + counts)")
    subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
