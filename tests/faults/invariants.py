"""What must hold after every injected fault, and the tools that inject faults into real runs.

`check_invariants` is the one assertion every fault test ends with:

1. `backupd list --json` shows exactly the committed backup directories (no `.partial-*` ever);
2. every listed backup passes `backupd verify`, except the ones the test damaged, which must fail it;
3. the backups that existed before the fault are byte-identical (every file hashed before and after);
4. the next run succeeds and commits a verified backup;
5. `backupd catalog rebuild` gives the same backups rows (job, backup_id, verified, bytes) as before it.

Runs that are killed are real subprocesses (`python -m backupd ... run JOB`) started in a session of their
own; they and every child they left (rsync, ssh, a dump tool) are killed by PID, never by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.store.backups import PARTIAL_PREFIX, VERDICT, is_backup_id

REPO = Path(__file__).resolve().parents[2]
SEED_ENV = "BACKUPD_FAULT_SEED"

Cli = Callable[..., tuple[int, str, str]]  # tests.conftest.run_cli bound to capsys: (rc, stdout, stderr)

# fault kind -> [injected, all invariants held]; printed by tests/faults/conftest.py at the end of the run
SUMMARY: dict[str, list[int]] = defaultdict(lambda: [0, 0])
LAST_SEED: int | None = None


def fault_seed() -> int:
    """The seed of every random choice in tests/faults: $BACKUPD_FAULT_SEED, or a fresh one (printed)."""
    raw = os.environ.get(SEED_ENV)
    global LAST_SEED
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    LAST_SEED = seed
    print(f"fault injection seed: {SEED_ENV}={seed}")
    return seed


def rng_for(seed: int, what: str) -> random.Random:
    """One generator per test, so a test's instants do not depend on which other tests ran before it."""
    return random.Random(f"{seed}:{what}")


@contextmanager
def counted(kind: str) -> Iterator[None]:
    """Count one injected fault of `kind`, and whether every assertion after it held."""
    SUMMARY[kind][0] += 1
    yield
    SUMMARY[kind][1] += 1


# ------------------------------------------------------------------------------------------ targets


@dataclass
class Target:
    """One job under test: its config file and where its store and state are."""

    config: Path
    job: str
    store: Path
    state: Path

    @classmethod
    def at(cls, config: Path, job: str, store: Path | None = None, state: Path | None = None) -> Target:
        return cls(config, job, store or config.parent / "store", state or config.parent / "state")

    @property
    def job_dir(self) -> Path:
        return self.store / self.job

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "backupd", "--config", str(self.config), *args]

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """`backupd ARGS` as a subprocess in a session of its own (its children share its process group)."""
        return subprocess.Popen(
            self.argv(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, **kwargs,
        )

    def run(self, *args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )

    def partials(self) -> list[str]:
        return sorted(p.name for p in self.job_dir.iterdir() if p.name.startswith(PARTIAL_PREFIX)) if (
            self.job_dir.is_dir()) else []

    def committed(self) -> list[str]:
        if not self.job_dir.is_dir():
            return []
        return sorted(p.name for p in self.job_dir.iterdir() if p.is_dir() and is_backup_id(p.name))


Snapshot = dict[str, dict[str, str]]  # backup_id -> {relative path: sha256}


def snapshot(t: Target) -> Snapshot:
    """Every file of every committed backup of the job, hashed -- but `verification.json`, the record that
    `backupd verify` (run by check_invariants itself) rewrites with its timestamp beside the manifest."""
    out: Snapshot = {}
    for bid in t.committed():
        d = t.job_dir / bid
        out[bid] = {
            str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != VERDICT
        }
    return out


def catalog_rows(t: Target) -> set[tuple[str, str, int, int]]:
    """(job, backup_id, verified, bytes) of the catalog's live backups rows, read by a client of our own."""
    db = sqlite3.connect(t.state / "catalog.sqlite")
    try:
        return {
            (r[0], r[1], int(r[2]), int(r[3]))
            for r in db.execute("SELECT job, backup_id, verified, bytes FROM backups WHERE deleted_at IS NULL")
        }
    finally:
        db.close()


def runs(t: Target) -> list[sqlite3.Row]:
    db = sqlite3.connect(t.state / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM runs WHERE job=? ORDER BY id", (t.job,)))
    finally:
        db.close()


# ------------------------------------------------------------------------------------------ invariants


def listed_ids(cli: Cli, t: Target) -> list[str]:
    rc, out, err = cli("--config", str(t.config), "list", t.job, "--json")
    assert rc == 0, err
    return [r["backup_id"] for r in json.loads(out)]


def assert_only_committed_listed(cli: Cli, t: Target) -> list[str]:
    ids = listed_ids(cli, t)
    assert not [i for i in ids if i.startswith(".") or not is_backup_id(i)], f"a partial is listed: {ids}"
    assert sorted(ids) == t.committed(), f"list {ids} != committed directories {t.committed()}"
    return ids


def verify_report(cli: Cli, t: Target) -> dict[str, bool]:
    """`backupd verify JOB --json`: backup_id -> ok (exit 0 exactly when every one is ok)."""
    rc, out, err = cli("--config", str(t.config), "verify", t.job, "--json")
    report = {r["backup_id"]: bool(r["ok"]) for r in json.loads(out)} if out.strip() else {}
    assert rc == (0 if all(report.values()) else 1), (rc, report, err[-2000:])
    return report


def check_invariants(
    cli: Cli,
    t: Target,
    before: Snapshot,
    *,
    damaged: frozenset[str] = frozenset(),
    next_run: Callable[[], tuple[int, str]] | None = None,
    pruned_ok: bool = False,
    unindexable: frozenset[str] = frozenset(),
) -> str:
    """Assert the five invariants after a fault; returns the id the next run committed.

    `next_run` (default: `backupd run JOB` in this process) returns (exit code, stderr). `damaged` are the
    backups the test broke on purpose: they must be reported bad, and are not compared byte for byte.
    `pruned_ok`: retention may delete earlier backups (in the faulty run or the next one, after a copy to S3);
    only the ones still there are compared.
    `unindexable`: damaged backups whose manifest cannot be read; a rebuild from the manifests cannot index
    them, so their rows are the only ones allowed to go.
    """
    # 1. only committed backups are listed
    ids = assert_only_committed_listed(cli, t)
    # 3. the earlier backups are untouched (checked before the next run, which may prune)
    now = snapshot(t)
    for bid, files in before.items():
        if bid in damaged or (pruned_ok and bid not in now):
            continue
        assert bid in now, f"backup {bid} disappeared"
        assert now[bid] == files, f"backup {bid} changed: {sorted(set(files.items()) ^ set(now[bid].items()))}"
    # 2. every listed backup verifies, the damaged ones do not
    report = verify_report(cli, t)
    assert set(report) == set(ids), (report, ids)
    assert {b for b, ok in report.items() if not ok} == set(damaged) & set(ids), report
    # 4. the next run succeeds
    if next_run is None:
        rc, _, err = cli("--config", str(t.config), "run", t.job)
    else:
        rc, err = next_run()
    assert rc == 0, f"the next run failed: {err[-3000:]}"
    assert t.partials() == [], f"partials left after the next run: {t.partials()}"
    ids_after = assert_only_committed_listed(cli, t)
    new = sorted(set(ids_after) - set(ids))
    assert len(new) == 1, (ids, ids_after)
    after = snapshot(t)
    for bid, files in before.items():
        if bid in damaged or (pruned_ok and bid not in after):
            continue
        assert after.get(bid) == files, f"backup {bid} changed or vanished in the next run"
    report = verify_report(cli, t)
    assert report[new[0]], f"the new backup {new[0]} does not verify"
    # 5. a catalog rebuilt from the manifests has the same rows
    rows = {r for r in catalog_rows(t) if r[1] not in unindexable}
    rc, _, err = cli("--config", str(t.config), "catalog", "rebuild")
    assert rc == 0, err
    rebuilt = catalog_rows(t)
    assert rebuilt == rows, f"rebuild changed the rows: {rebuilt ^ rows}"
    return new[0]


# ------------------------------------------------------------------------------------------ processes


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgrp, state, starttime) from /proc/PID/stat, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[2]), rest[0], int(rest[19])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pid: int) -> dict[int, int]:
    """PID -> start time of every live process below `pid` (by PPID) or in its process group."""
    stats = {p: s for p in _all_pids() if (s := _stat(p)) is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for p, s in stats.items():
        children[s[0]].append(p)
    out: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p in stats and p not in out:
            out[p] = stats[p][3]
            todo.extend(children.get(p, []))
    out.update({p: s[3] for p, s in stats.items() if s[1] == pid and p != pid})
    return out


def children_of(pid: int) -> list[int]:
    return [p for p in _all_pids() if (s := _stat(p)) is not None and s[0] == pid]


def alive(pid: int, start: int | None = None) -> bool:
    s = _stat(pid)
    return s is not None and s[2] != "Z" and (start is None or s[3] == start)


def kill_tree(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> list[int]:
    """Kill `proc` by its PID with `sig`, then SIGKILL every child it left, each by PID; reap `proc`.

    The children are found (by PPID and by process group) before the kill, while they still hang below it,
    and again after (one might have started in between); the start time guards against a reused PID.
    """
    left = descendants(proc.pid)
    os.kill(proc.pid, sig)
    proc.communicate(timeout=60)
    left.update(descendants(proc.pid))
    for pid, start in left.items():
        if alive(pid, start):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(alive(p, s) for p, s in left.items()):
        assert time.monotonic() < deadline, f"children of {proc.pid} still alive: {left}"
        time.sleep(0.02)
    return sorted(left)


def timed_run(t: Target, **kwargs: Any) -> float:
    """Seconds one normal `backupd run JOB` subprocess takes, spawn to exit (it must succeed)."""
    t0 = time.monotonic()
    done = t.run("run", t.job, **kwargs)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    return took


def wait_until(pred: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@dataclass
class Outcomes:
    """How the injected runs ended, for the summary."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, what: str) -> None:
        self.counts[what] += 1

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))


def env_with(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
