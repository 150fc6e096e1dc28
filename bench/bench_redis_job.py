"""End-to-end Redis job time against a plain `rsync` of the same RDB over the same sshd.

    python bench/bench_redis_job.py [SIZE_MB]      (default 1800 of values: a ~1 GB RDB)

Starts a scratch master + replica + sshd, fills the master with ~SIZE_MB of values (half random bytes,
half repetitive text, so compression has something to do), then times:
  * plain rsync:   a BGSAVE'd dump.rdb copied over SSH into an empty directory (the reference setup);
  * job, 1st run:  `backupd run` with an empty staging mirror (BGSAVE + full copy + verify + compress);
  * job, 2nd run:  after changing ~1% of the keys, so rsync's delta transfer has the previous copy.
  * job, bgsave=false: the like-for-like figure: the job copies the existing file, as plain rsync does
    (the health gate, stat before/after, verify, redis-check-rdb, zstd, sha256, commit all included).
The ratio job/rsync is printed twice: whole job, and job minus its BGSAVE (plain rsync makes no fresh
dump). The 2nd run is compared with plain rsync into a directory holding the previous copy (its delta).
Then the same over a simulated ~1 Gbit/s link (rsync --bwlimit on both sides, BENCH_LINK to change it):
on loopback both ends of the transfer share this machine's cores with our verification, on a real link
the backup machine's cores verify while the bytes arrive.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupd.engine.remote import ssh_options
from backupd.lab.content import write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.redis import Redis

VALUE = 4096
LINK = os.environ.get("BENCH_LINK", "112M")  # rsync --bwlimit: MiB/s, about a 1 Gbit/s link


def fill(master: Redis, size_mb: int) -> int:
    keys = size_mb * (1 << 20) // VALUE
    text = (b"lorem ipsum dolor sit amet " * 200)[: VALUE // 2]
    with master.client() as c:
        pipe = c.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"k:{i}", os.urandom(VALUE // 2) + text)
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return keys


def step_times(stdout: str, total: float) -> str:
    """Seconds between consecutive JSON log events (start -> health -> bgsave -> rsync -> verify -> ...)."""
    from datetime import datetime

    rows = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    marks = [(r.get("step") or r["event"], datetime.fromisoformat(r["ts"])) for r in rows]
    parts = [f"{a}->{b} {(tb - ta).total_seconds():.2f}s" for (a, ta), (b, tb) in itertools.pairwise(marks)]
    if marks:
        parts.append(f"(outside the run: {total - (marks[-1][1] - marks[0][1]).total_seconds():.2f}s)")
    return ", ".join(parts)


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return time.monotonic() - t0, proc


def run_job(etc: Path, job: dict[str, object]) -> tuple[float, subprocess.CompletedProcess[str]]:
    config = etc / "backupd.toml"
    if not config.exists():
        config = write_config(etc, {"r": job})
    t, proc = timed([sys.executable, "-m", "backupd", "--config", str(config), "run", "r"])
    assert proc.returncode == 0, proc.stderr
    return t, proc


def report(label: str, t_job: float, t_ref: float, proc: subprocess.CompletedProcess[str], etc: Path) -> None:
    print("   steps: " + step_times(proc.stdout, t_job))
    latest = sorted(p for p in (etc / "store" / "r").iterdir() if not p.name.startswith("."))
    man = json.loads((latest[-1] / "manifest.json").read_text())
    src, art = man["source"], man["artifacts"][0]
    bgsave = float(src.get("bgsave_seconds", 0.0))
    print(
        f"{label:28s} {t_job:6.2f}s  ratio {t_job / t_ref:.2f}x; minus BGSAVE ({bgsave:.2f}s) "
        f"{(t_job - bgsave) / t_ref:.2f}x; stored {art['bytes'] / 1e6:.1f} MB "
        f"(zstd {art['raw_bytes'] / max(1, art['bytes']):.2f}:1), followed {src.get('copy_followed')}, "
        f"rsync literal {src['rsync'].get('Literal data', '?')}, "
        f"redis-check-rdb {src['redis_check_rdb'].get('keys', '?')} keys"
    )


def main() -> int:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1800  # about a 1 GB RDB
    base = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    with Redis(base, password="bench-pw") as master:
        t0 = time.monotonic()
        keys = fill(master, size_mb)
        print(f"dataset: {keys} keys x {VALUE} B values, filled in {time.monotonic() - t0:.1f}s")
        with Redis(base, master=master, password="bench-pw") as replica, SSHD(base) as sshd:
            replica.wait_replica_linked(timeout=600)
            with replica.client() as c:
                c.bgsave(schedule=False)
                while c.info("persistence")["rdb_bgsave_in_progress"]:
                    time.sleep(0.05)
            rdb = replica.rdb_path
            print(f"RDB: {rdb.stat().st_size / 1e6:.1f} MB")
            cfg_ssh = sshd.ssh_config()
            from backupd.settings import SSHCfg

            ssh = SSHCfg.model_validate(cfg_ssh)
            plain_dir = base / "plain"
            plain_dir.mkdir()
            rsync = ["rsync", "-e", shlex.join(["ssh", *ssh_options(ssh)]), "--"]
            rsync += [f"{ssh.target}:{rdb}", str(plain_dir) + "/"]
            t_plain, proc = timed(rsync)
            assert proc.returncode == 0, proc.stderr
            print(f"plain rsync over ssh:        {t_plain:6.2f}s  ({rdb.stat().st_size / 1e6 / t_plain:.0f} MB/s)")

            secret = write_secret(base / "pw", "bench-pw")
            job = {
                "type": "redis",
                "schedule": "@daily",
                "host": replica.host,
                "port": replica.port,
                "password_file": str(secret),
                "ssh": cfg_ssh,
            }
            # Like for like first: the job without BGSAVE copies the same existing file plain rsync copies.
            t_job, proc = run_job(base / "etc-nosave", {**job, "bgsave": False, "max_age": "1h"})
            report("job, bgsave=false (no mirror)", t_job, t_plain, proc, base / "etc-nosave")
            for label in ("job, 1st run (no mirror)", "job, 2nd run (delta)"):
                t_ref = t_plain
                if "2nd" in label:
                    with master.client() as c:
                        for i in range(0, keys, 100):
                            c.set(f"k:{i}", os.urandom(VALUE))
                    replica.wait_replica_linked()
                    time.sleep(0.5)  # let the replica apply the stream before we save
                    with replica.client() as c:
                        c.bgsave(schedule=False)
                        while c.info("persistence")["rdb_bgsave_in_progress"]:
                            time.sleep(0.05)
                    t_ref, proc = timed(rsync)  # plain rsync again, the previous copy in place: its delta
                    assert proc.returncode == 0, proc.stderr
                    print(f"plain rsync, delta:          {t_ref:6.2f}s")
                t_job, proc = run_job(base / "etc", job)
                report(label, t_job, t_ref, proc, base / "etc")

            # The backup machine sits outside the primary network: the copy is bound by the link, not by
            # two cores shared by both ends of the transfer. Both sides get the same rsync --bwlimit.
            print(f"--- simulated link: rsync --bwlimit={LINK} on both (about 1 Gbit/s)")
            subprocess.run(["rm", "-rf", str(plain_dir)], check=True)
            plain_dir.mkdir()
            t_link, proc = timed([rsync[0], f"--bwlimit={LINK}", *rsync[1:]])
            assert proc.returncode == 0, proc.stderr
            print(f"plain rsync over the link:   {t_link:6.2f}s  ({rdb.stat().st_size / 1e6 / t_link:.0f} MB/s)")
            linked = {**job, "ssh": {**cfg_ssh, "bwlimit": LINK}}
            t_job, proc = run_job(base / "etc-link-nosave", {**linked, "bgsave": False, "max_age": "1h"})
            report("job, bgsave=false, link", t_job, t_link, proc, base / "etc-link-nosave")
            t_job, proc = run_job(base / "etc-link", linked)
            report("job, bgsave=true, link", t_job, t_link, proc, base / "etc-link")
    subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
