"""What decryption costs a restore: `backupd restore` of a MySQL backup encrypted with age against the same
data backed up without encryption, each restored into a fresh throwaway MariaDB.

    python bench/bench_restore_decrypt.py [SIZE_MB] [RUNS]      (defaults 500 and 3)

Data: one InnoDB table filled server-side from MariaDB's sequence engine, dumped by two real `backupd run`s
of the same database (one job with `[encryption]`, one without). The restores alternate (plain, encrypted,
encrypted, plain, ...), each into a new server, shut down and the disk synced before the next one starts,
so no load pays for the previous one's background writes. Prints each run, the medians and their ratio.
Target: the decrypting restore takes at most 1.10x the plain one.

Before the restores, the read path alone: each stored artifact decrypted (or not) and decompressed by
`engine.procs.feed_command` into `cat > /dev/null`, five times each, so the cost of decryption shows without
the server's load time (and its noise) around it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupd.engine.crypto import load_identities, unlocking
from backupd.engine.procs import feed_command
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


def keygen(path: Path) -> str:
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return out.stderr.strip().split(": ", 1)[1]


def restore(target: MariaDB, cfg: Path, base: Path, rows: int, identity: Path | None) -> float:
    env = {"BACKUPD_RESTORE_PASSWORD_FILE": str(write_secret(base / "t.pw", target.root_password))}
    extra = ["--identity", str(identity)] if identity is not None else []
    uri = f"mysql://root@{target.host}:{target.port}/restored"
    took = backupd(cfg, "restore", "mysql", "--to", uri, *extra, env=env)
    n = target.execute("SELECT COUNT(*) FROM restored.t")[0][0]
    assert int(n) == rows, (n, rows)
    return took


def feed_alone(arts: dict[str, Path], key: Path, runs: int = 5) -> None:
    times: dict[str, list[float]] = {"plain": [], "encrypted": []}
    with unlocking(load_identities(key)):
        for i in range(runs):
            for kind in ("plain", "encrypted") if i % 2 == 0 else ("encrypted", "plain"):
                began = time.monotonic()
                done = feed_command(["cat"], arts[kind])
                times[kind].append(time.monotonic() - began)
                assert done.ok, done
    plain, encrypted = statistics.median(times["plain"]), statistics.median(times["encrypted"])
    print(f"read path alone: plain median {plain:.2f}s, decrypting median {encrypted:.2f}s,"
          f" ratio {encrypted / plain:.3f}x", flush=True)


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    base = Path(tempfile.mkdtemp(prefix="bench-restore-decrypt-"))
    key = base / "id.key"
    recipient = keygen(key)
    cfgs: dict[str, Path] = {}
    arts: dict[str, Path] = {}
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
        job = {
            "type": "mysql",
            "schedule": "@daily",
            "host": src.host,
            "port": src.port,
            "user": "root",
            "password_file": str(write_secret(base / "src.pw", src.root_password)),
            "databases": ["bench"],
        }
        for kind in ("plain", "encrypted"):
            enc = {"encryption": {"age_recipients": [recipient]}} if kind == "encrypted" else {}
            cfgs[kind] = write_config(base / kind, {"mysql": {**job, **enc}})
            took = backupd(cfgs[kind], "run", "mysql")
            [art] = (base / kind / "store" / "mysql").glob("*/bench.sql.*")
            arts[kind] = art
            print(f"dump {kind:9s} {took:6.1f}s  stored {art.name} {art.stat().st_size / 2**20:.0f} MiB", flush=True)

    feed_alone(arts, key)
    times: dict[str, list[float]] = {"plain": [], "encrypted": []}
    order = [k for i in range(runs) for k in (("plain", "encrypted") if i % 2 == 0 else ("encrypted", "plain"))]
    for kind in order:
        os.sync()
        with MariaDB(base) as target:
            took = restore(target, cfgs[kind], base, rows, key if kind == "encrypted" else None)
        times[kind].append(took)
        print(f"  restore {kind:9s} {took:6.1f}s", flush=True)

    plain, encrypted = statistics.median(times["plain"]), statistics.median(times["encrypted"])
    print(f"plain restore      median {plain:6.1f}s  ({', '.join(f'{t:.1f}' for t in times['plain'])})")
    print(f"decrypting restore median {encrypted:6.1f}s  ({', '.join(f'{t:.1f}' for t in times['encrypted'])})")
    print(f"ratio {encrypted / plain:.3f}x  (target <= 1.10x)")
    # each run's two restores ran back to back: their ratio is less at the mercy of a loaded machine
    pairs = [e / p for p, e in zip(times["plain"], times["encrypted"], strict=True)]
    print(f"median of the {runs} back-to-back ratios {statistics.median(pairs):.3f}x"
          f"  ({', '.join(f'{r:.2f}' for r in pairs)})")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
