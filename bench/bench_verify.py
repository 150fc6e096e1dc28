"""Scheduled re-verification throughput against `sha256sum` of the same stored files.

    python bench/bench_verify.py                 # 2 GiB of stored backups (files job, incompressible data)
    python bench/bench_verify.py --gib 20        # the issue's 20 GB (needs ~2x that of free disk)

Makes a files job whose backups hold random data (zstd cannot shrink it, so stored bytes = data bytes), then
times `backupd verify --scheduled` (sha256 + zstd decompression + tar structure of every artifact, at nice 19
and the idle I/O class) against `sha256sum` of the same artifact files, after dropping nothing from the page
cache (both read warm files; run it twice to see the cold case on a machine where you can drop caches).
Prints both rates and the ratio (target: verify at least 0.8x sha256sum's throughput).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupd.lab.content import write_config


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--backups", type=int, default=4)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    src = base / "src"
    src.mkdir()
    per = int(args.gib * (1 << 30) / args.backups)
    cfg = str(write_config(base / "etc", {"site": {"type": "files", "source": f"{src}/", "schedule": "@yearly"}},
                           settings={"compression": {"algorithm": "zstd", "level": 1}}))
    for i in range(args.backups):
        with (src / f"blob{i}.bin").open("wb") as fh:
            left = per
            while left:
                n = min(left, 64 << 20)
                fh.write(os.urandom(n))
                left -= n
        subprocess.run([sys.executable, "-m", "backupd", "--config", cfg, "run", "site"], check=True,
                       stdout=subprocess.DEVNULL)
        (src / f"blob{i}.bin").unlink()  # the next backup holds new data only
    files = sorted(str(p) for p in (base / "etc" / "store" / "site").glob("*/files.tar*"))
    total = sum(os.path.getsize(f) for f in files)

    t0 = time.monotonic()
    subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)
    sha = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "backupd", "--config", cfg, "verify", "--scheduled"], check=True,
                   stdout=subprocess.DEVNULL)
    ver = time.monotonic() - t0
    mib = total / (1 << 20)
    print(f"stored: {mib:.0f} MiB in {len(files)} backups")
    print(f"sha256sum:              {sha:6.2f} s  {mib / sha:7.1f} MiB/s")
    print(f"backupd verify --scheduled: {ver:6.2f} s  {mib / ver:7.1f} MiB/s  ({sha / ver:.2f}x sha256sum)")
    subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
