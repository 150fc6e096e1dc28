"""Time `retention.plan` on 100,000 backups: one long history, many jobs, and a worst-case policy.

Run: python bench/bench_prune_plan.py  (prints the best of 3 per scenario; target well under 2 s).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from backupd.store.retention import Backup, Policy, plan

N = 100_000
NOW = datetime(2026, 11, 28, tzinfo=UTC)
TYPICAL = Policy(keep_last=24, keep_hourly=48, keep_daily=30, keep_weekly=12, keep_monthly=24, keep_yearly=10)
# Every rule has more slots than buckets exist, so every backup is bucketed by every rule.
WORST = Policy(keep_last=N, keep_hourly=N, keep_daily=N, keep_weekly=N, keep_monthly=N, keep_yearly=N)


def history(job: str, count: int, step: timedelta, rnd: random.Random) -> list[Backup]:
    """`count` backups ending at NOW, ~5% unverified, S3 enabled with the newest few not shipped yet."""
    out = []
    for i in range(count):
        t = NOW - step * (i + 1) + timedelta(seconds=rnd.randrange(60))
        verified = rnd.random() > 0.05
        out.append(Backup(f"{job}-{t:%Y%m%dT%H%M%SZ}", t, True, verified, True, i >= 3))
    rnd.shuffle(out)  # the catalog gives no order guarantee
    return out


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rnd = random.Random(42)
    one_job = history("db", N, timedelta(hours=1), rnd)  # ~11.4 years hourly
    jobs = [history(f"job{j}", N // 100, timedelta(hours=6), rnd) for j in range(100)]

    def many() -> None:
        for backups in jobs:
            plan(backups, TYPICAL, NOW, "Europe/Berlin")

    scenarios: list[tuple[str, Callable[[], object]]] = [
        ("1 job x 100k, typical policy", lambda: plan(one_job, TYPICAL, NOW, "Europe/Berlin")),
        ("1 job x 100k, worst case (all rules unbounded)", lambda: plan(one_job, WORST, NOW, "Europe/Berlin")),
        ("1 job x 100k, empty policy (keep all)", lambda: plan(one_job, Policy(), NOW, "Europe/Berlin")),
        ("100 jobs x 1k, typical policy", many),
    ]
    decisions = plan(one_job, TYPICAL, NOW, "Europe/Berlin")
    print(f"typical policy keeps {sum(d.keep for d in decisions)} of {len(decisions)} (incl. unverified)")
    for name, fn in scenarios:
        print(f"{name:48s} {best_of(3, fn) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
