"""S3 copy throughput against `aws s3 cp`, and the prune plan over 100,000 catalogued backups.

Run: python bench/bench_s3_upload.py [--size-mb 1024] [--backups 100000]
Both uploads go to the same local moto server (one real HTTP process), from the same random file, so the
ratio compares the clients; absolute figures are bounded by moto, not by a real S3 endpoint.
Targets: backupd upload >= 0.9x the CLI's throughput; prune --dry-run plan < 2 s on 100k backups.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backupd.config import load_config
from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.logs import EventLog
from backupd.store.backups import Store, StoredBackup, make_backup_id
from backupd.store.catalog import Catalog
from backupd.store.prune import prune_local
from backupd.store.s3 import Bucket, copy_backup, part_size

MiB = 1024 * 1024


def random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def bench_upload(tmp: Path, size_mb: int) -> None:
    with MotoS3(tmp / "moto") as server:
        os.environ.update(server.env())
        server.create_bucket("bench")
        d = tmp / "store" / "bench" / "20260101T000000Z"
        d.mkdir(parents=True)
        size = size_mb * MiB
        digest = random_file(d / "big.bin", size)
        art = {"name": "big", "file": "big.bin", "format": "raw", "bytes": size, "raw_bytes": size, "sha256": digest}
        backup = StoredBackup("bench", d.name, d, {"job": "bench", "verified": True, "artifacts": [art]})
        settings = {"s3": {"enabled": True, "bucket": "bench", "endpoint_url": server.endpoint_url}}
        bucket = Bucket(load_config(write_config(tmp / "etc", {}, settings=settings)).settings.s3)

        argv = ["aws", "s3", "cp", "--only-show-errors", "--endpoint-url", server.endpoint_url, str(d / "big.bin"),
                "s3://bench/aws-cli/big.bin"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        t_cli = time.perf_counter() - t0
        server.client().delete_object(Bucket="bench", Key="aws-cli/big.bin")

        t0 = time.perf_counter()
        bucket.upload_file(d / "big.bin", "upload-only/big.bin", size, digest)
        t_up = time.perf_counter() - t0
        server.client().delete_object(Bucket="bench", Key="upload-only/big.bin")

        t0 = time.perf_counter()
        copy_backup(bucket, backup)
        t_copy = time.perf_counter() - t0

    mb = size / MiB
    print(f"upload {mb:.0f} MiB to moto over HTTP (SHA256 checksums, {-(-size // part_size(size))} parts)")
    print(f"  aws s3 cp                      {t_cli:7.2f} s  {mb / t_cli:7.1f} MiB/s")
    print(f"  backupd upload                 {t_up:7.2f} s  {mb / t_up:7.1f} MiB/s  ({t_cli / t_up:.2f}x the CLI)")
    print(f"  backupd copy (upload + check)  {t_copy:7.2f} s  {mb / t_copy:7.1f} MiB/s  ({t_cli / t_copy:.2f}x)")


def bench_prune(tmp: Path, n: int) -> None:
    retention = {"default": {"keep_last": 24, "keep_hourly": 48, "keep_daily": 30, "keep_weekly": 12,
                             "keep_monthly": 24, "keep_yearly": 10}}  # fmt: skip
    cfg = load_config(
        write_config(
            tmp / "p",
            {"db": {"type": "files", "schedule": "@hourly", "source": "/srv", "timezone": "Europe/Berlin"}},
            retention=retention,
        )
    )
    now = datetime.now(UTC)
    ids = [make_backup_id(now - timedelta(hours=i + 1)) for i in range(n)]
    root = cfg.store_root / "db"
    root.mkdir(parents=True)
    for bid in ids:
        os.mkdir(root / bid)
    catalog = Catalog(cfg.state_dir)
    with catalog.tx() as db:
        db.executemany(
            "INSERT INTO backups (job, backup_id, started_at, path, bytes, raw_bytes, verified, manifest)"
            " VALUES ('db', ?, '', ?, 0, 0, 1, '{}')",
            [(bid, str(root / bid)) for bid in ids],
        )
    store, events = Store(cfg.store_root), EventLog("json", quiet=True)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        rows = prune_local(cfg, store, catalog, "db", events, dry_run=True)
        best = min(best, time.perf_counter() - t0)
    catalog.close()
    kept = sum(r.keep for r in rows)
    print(f"prune --dry-run plan, {n:,} catalogued backups (store scan + catalog + policy), best of 3")
    print(f"  {best:.3f} s, keeps {kept} of {len(rows):,}")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        subprocess.run(["python", "-m", "backupd", "--config", str(cfg.path), "prune", "--dry-run"], stdout=null,
                       check=True)  # fmt: skip
    print(f"  whole CLI with the {n:,}-row table printed: {time.perf_counter() - t0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--backups", type=int, default=100_000)
    ap.add_argument("--skip-upload", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="backupd-bench-") as t:
        tmp = Path(t)
        bench_prune(tmp, args.backups)
        if not args.skip_upload:
            bench_upload(tmp, args.size_mb)


if __name__ == "__main__":
    main()
