"""Native MongoDB dump throughput and memory: documents per second and peak RSS for two sizes.

Seeds a scratch wire-protocol server (nx-27017, or mongod when installed) with N small documents, then
runs the native engine in a fresh child process (so the seeding does not count towards its ru_maxrss),
writing through the real pipeline (archive writer -> checker + zstd + sha256 -> file). Peak RSS should
stay flat as N grows: documents are streamed one cursor batch at a time.

    python bench/bench_mongo_native.py                 # 1,000,000 and 100,000 documents
    python bench/bench_mongo_native.py --sizes 20000,200000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(uri: str, out_dir: str) -> None:
    from backupd.engine.pipeline import ArtifactWriter
    from backupd.formats.mongo_archive import MongoArchiveChecker
    from backupd.sources.mongo.native import connect, dump_native

    client = connect(uri)
    writer = ArtifactWriter(Path(out_dir), "mongo", "mongo-archive", ".archive", checker=MongoArchiveChecker())
    t0 = time.monotonic()
    stats = dump_native(client, writer)
    result = writer.close()
    seconds = time.monotonic() - t0
    assert result.ok, result.check.errors if result.check else "no check"
    print(
        json.dumps(
            {
                "documents": sum(stats.counts.values()),
                "seconds": seconds,
                "raw_bytes": result.raw_bytes,
                "bytes": result.bytes,
                "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def seed(server: object, n: int) -> None:
    from backupd.scratch.mongo import MongoServer

    assert isinstance(server, MongoServer)
    with server.client() as c:
        c.drop_database("bench")
        batch = 10_000
        for start in range(0, n, batch):
            docs = [
                {"_id": i, "k": i % 97, "name": f"user-{i}", "v": i * 0.5} for i in range(start, min(n, start + batch))
            ]
            c.bench.docs.insert_many(docs, ordered=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,100000", help="comma-separated document counts")
    ap.add_argument("--child", nargs=2, metavar=("URI", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from backupd.scratch.mongo import MongoServer

    with MongoServer() as server, tempfile.TemporaryDirectory() as tmp:
        print(f"server: {server.kind} on {server.uri}")
        print(
            f"{'documents':>10} {'seed s':>8} {'dump s':>8} {'docs/s':>10} {'raw MiB':>8} {'zst MiB':>8} "
            f"{'peak RSS MiB':>13}"
        )
        for n in (int(x) for x in args.sizes.split(",")):
            t0 = time.monotonic()
            seed(server, n)
            seeded = time.monotonic() - t0
            out = Path(tmp) / str(n)
            out.mkdir()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", server.uri, str(out)], capture_output=True, text=True, check=True
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{r['documents']:>10} {seeded:>8.1f} {r['seconds']:>8.2f} {r['documents'] / r['seconds']:>10.0f} "
                f"{r['raw_bytes'] / 2**20:>8.1f} {r['bytes'] / 2**20:>8.1f} {r['max_rss_kib'] / 1024:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
