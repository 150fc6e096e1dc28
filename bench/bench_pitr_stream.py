"""The PITR stream under a steady write load: committed lag, CPU and memory of `backupd stream`.

    python bench/bench_pitr_stream.py [SECONDS] [ROWS_PER_SECOND] [SEGMENT]    (default 120 1000 10s)

Starts a scratch MariaDB with its binlog on (ROW), runs the real `backupd stream JOB` in a subprocess and a
workload that inserts ROWS_PER_SECOND rows per second (transactions of 5 rows, ~100 bytes each, paced by
the clock). Every 0.5 s it reads the stream's state file (its committed lag, as /metrics computes it) and
/proc of the stream process (CPU time, RSS). Targets (issue 13): lag under SEGMENT + 5 s, under 3% of a core,
under 60 MB RSS. The first 5 s (start-up: imports, the first catch-up) are left out of the CPU figure.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymysql

from backupd.humanize import human_bytes
from backupd.lab.content import write_config, write_secret
from backupd.scratch.mariadb import MariaDB
from backupd.settings import parse_duration
from backupd.store.segments import SegmentStore
from backupd.store.stream_state import lag_seconds, read_state

TX_ROWS = 5
WARMUP = 5.0
CLK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_parts(pid: int) -> str:
    """VmRSS split into anonymous memory (the heap, what the code allocates) and file pages (mapped .so)."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
            got[key] = int(value.split()[0]) * 1024 / 1e6
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):  # shared library pages divided among the processes mapping them
            got["Pss"] = int(line.split()[1]) * 1024 / 1e6
    return ", ".join(f"{k} {v:.1f} MB" for k, v in got.items())


def top_mappings(pid: int, n: int = 8) -> str:
    """The mapped files holding most of the resident pages (shared libraries of the imported packages)."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anon]"
        elif head and head[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(head[1])
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{Path(k).name} {v * 1024 / 1e6:.1f}" for k, v in top)


def workload(db: MariaDB, database: str, rate: int, stop: threading.Event, done: list[int]) -> None:
    conn = pymysql.connect(host=db.host, port=db.port, user="root", password=db.root_password, database=database,
                           autocommit=True)
    payload = "x" * 80
    began = time.monotonic()
    n = 0
    with conn.cursor() as cur:
        while not stop.is_set():
            due = began + n / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            values = ",".join(f"({n + i}, '{payload}')" for i in range(TX_ROWS))
            cur.execute(f"INSERT INTO t VALUES {values}")
            n += TX_ROWS
    conn.close()
    done.append(n)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    segment = sys.argv[3] if len(sys.argv) > 3 else "10s"
    seg_s = float(parse_duration(segment))
    base = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
    with MariaDB(extra_args=["--log-bin=mariadb-bin", "--binlog-format=ROW", "--server-id=1"]) as db:
        database = f"bench_{secrets.token_hex(3)}"
        db.execute(f"CREATE DATABASE {database}")
        db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR(100))", database=database)
        db.create_user("streamer", "s3cret-" + secrets.token_hex(4), "REPLICATION SLAVE, BINLOG MONITOR")
        pw = write_secret(base / "pw", db.password_for("streamer"))
        job = {"type": "mysql", "schedule": "0 3 * * *", "host": db.host, "port": db.port, "user": "streamer",
               "password_file": str(pw), "databases": [database],
               "pitr": {"enabled": True, "segment": segment, "server_id": 4001}}
        cfg = write_config(base, {"db": job})
        proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(cfg), "stream", "db"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop = threading.Event()
        done: list[int] = []
        worker = threading.Thread(target=workload, args=(db, database, rate, stop, done), daemon=True)
        began = time.monotonic()
        worker.start()
        lags: list[float] = []
        rss_max = 0
        cpu0: tuple[float, float] | None = None
        t0 = 0.0
        while time.monotonic() - began < seconds:
            time.sleep(0.5)
            now = time.monotonic()
            if cpu0 is None and now - began >= WARMUP:
                cpu0, t0 = cpu_times(proc.pid), now
            rss_max = max(rss_max, rss_bytes(proc.pid))
            lag = lag_seconds(read_state(base / "state", "db"), True)
            if lag is not None and now - began >= WARMUP:
                lags.append(lag)
        cpu1, t1 = cpu_times(proc.pid), time.monotonic()
        memory = f"{rss_parts(proc.pid)}; top mappings (MB): {top_mappings(proc.pid)}"
        threads = {}
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1: stat.rindex(")")]
            f = stat.rsplit(")", 1)[1].split()
            threads[f"{name}/{task.name}"] = round((int(f[11]) + int(f[12])) / CLK, 2)
        stop.set()
        worker.join()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            print(err.decode()[-2000:])
            return 1
        segs = SegmentStore(base / "store", "db").segments()
        rows = done[0]
        streamed = sum(int(s.manifest["transactions"]) for s in segs)
        stored = sum(int(s.manifest["bytes"]) for s in segs)
        raw = sum(int(s.manifest["raw_bytes"]) for s in segs)
        first = cpu0 or (0.0, 0.0)
        user, system = ((b - a) / max(1e-9, t1 - t0) for a, b in zip(first, cpu1, strict=True))
        core = user + system
        lags.sort()
        print(f"workload: {rows} rows in {rows // TX_ROWS} transactions over {seconds:.0f}s"
              f" ({rows / seconds:.0f} rows/s); segment {segment}")
        print(f"segments: {len(segs)} committed, {streamed} transactions, {human_bytes(raw)} of binlog"
              f" stored as {human_bytes(stored)}")
        print(f"lag: max {lags[-1]:.1f}s, p50 {lags[len(lags) // 2]:.1f}s (target < {seg_s + 5:.0f}s)")
        print(f"cpu: {100 * core:.2f}% of a core ({100 * user:.2f}% user, {100 * system:.2f}% system; target < 3%)")
        print(f"cpu seconds by thread (whole run): {threads}")
        print(f"rss: max {rss_max / 1e6:.1f} MB (target < 60 MB); at the end: {memory}")
        ok = lags[-1] < seg_s + 5 and core < 0.03 and rss_max < 60e6
        print("targets met" if ok else "TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
