"""What age encryption costs the dump pipeline: a synthetic SQL dump through ArtifactWriter (format check and
row counting on the plaintext, zstd -3, sha256, write), without and with encryption to two recipients.

    python bench/bench_encrypt.py [MB]        (default 500)

Each variant runs in its own process (peak RSS is that process's VmHWM), twice, best time kept. Target:
encryption costs at most 10% of the wall time; memory stays constant.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 1 << 20
BLOCKS = 16  # distinct 1 MiB blocks, cycled: well over zstd -3's 2 MiB window, so the stream does not compress away


def blocks() -> list[bytes]:
    out = []
    for b in range(BLOCKS):
        rows = []
        size = 0
        i = 0
        while size < CHUNK:
            h = hashlib.sha256(f"{b}:{i}".encode()).hexdigest()
            row = f"({b * 100000 + i},{i % 97},'Post {i}: it''s a title','{h} the {h[:32]} and {h[7:40]}','k{i}')"
            rows.append(row)
            size += len(row) + 1
            i += 1
        blk = ("INSERT INTO `posts` VALUES " + ",".join(rows) + ";\n").encode()
        out.append(blk)
    return out


HEAD = (b"-- MariaDB dump 10.19-11.4.2-MariaDB, for debian-linux-gnu (x86_64)\n--\n-- Host: x    Database: bench\n"
        b"-- ------------------------------------------------------\n\n"
        b"CREATE TABLE `posts` (`id` bigint, `author` int, `title` varchar(200), `content` longtext,"
        b" `meta` varchar(255));\n")
TAIL = b"-- Dump completed on 2026-01-01 10:00:00\n"


def child(mb: int, recipients: list[str]) -> None:
    from backupd.engine.pipeline import ArtifactWriter
    from backupd.formats.sqldump import SqlDumpChecker

    data = blocks()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        t0 = time.monotonic()
        w = ArtifactWriter(Path(d), "bench", "mysql-sql", ".sql", checker=SqlDumpChecker(), recipients=recipients)
        w.write(HEAD)
        for n in range(mb):
            blk = data[n % BLOCKS]
            for i in range(0, len(blk), 1 << 16):  # 64 KiB reads, as from a dump's pipe
                w.write(blk[i : i + (1 << 16)])
        w.write(TAIL)
        res = w.close()
        wall = time.monotonic() - t0
        assert res.ok, res.check
        hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
        print(f"{wall:.3f} {int(hwm.split()[1]) // 1024} {res.raw_bytes} {res.bytes} {res.file}")


def run(mb: int, recipients: list[str]) -> tuple[float, int, int, int, str]:
    out = subprocess.run([sys.executable, __file__, "--child", str(mb), *recipients], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), int(out[3]), out[4]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3:])
        return
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as d:
        recipients = []
        for n in range(2):
            key = Path(d) / f"k{n}"
            out = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True, check=True)
            recipients.append(out.stderr.strip().split(": ", 1)[1])
        results = {}
        for label, recips in (("plain", []), ("age", recipients)):
            tries = [run(mb, recips) for _ in range(2)]
            results[label] = min(tries)
        for label, (wall, rss, raw, stored, name) in results.items():
            print(f"{label:6} {name:20} {raw / 2**20:7.0f} MiB raw -> {stored / 2**20:6.0f} MiB stored"
                  f"  wall {wall:6.2f}s ({raw / 2**20 / wall:5.0f} MiB/s)  peak RSS {rss} MB")
        cost = results["age"][0] / results["plain"][0] - 1
        print(f"encryption costs {cost * 100:+.1f}% wall time (target at most +10%)")


if __name__ == "__main__":
    main()
