"""Faults of the machine backupd runs on: the store filesystem full, the state dir read-only, stored bytes
damaged, and the commit's durability order (fsync before the rename, the job directory after it)."""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import backupd.store.backups as backups_mod
from backupd.fsutil import fsync_dir as fsutil_fsync_dir
from backupd.lab.content import DUMP_GRANTS, write_config, write_secret
from backupd.scratch.mariadb import MariaDB
from tests.conftest import run_cli
from tests.faults.invariants import Cli, Target, check_invariants, counted, runs, snapshot

# ------------------------------------------------------------------------------------------ helpers


def files_target(base: Path, *, store: Path | None = None) -> Target:
    src = base / "src"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "b.bin").write_bytes(os.urandom(20_000))
    settings = {"storage": {"root": str(store)}} if store is not None else None
    cfg = write_config(base / "etc", {"site": {"type": "files", "source": f"{src}/", "schedule": "@daily"}},
                       settings=settings)
    return Target.at(cfg, "site", store=store)


def cli_for(capsys: pytest.CaptureFixture[str]) -> Cli:
    return lambda *argv: run_cli(capsys, *argv)


def run_ok(cli: Cli, t: Target) -> None:
    rc, _, err = cli("--config", str(t.config), "run", t.job)
    assert rc == 0, err


def one_line_failure(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ store full


def _fsize_limit(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_store_full_rlimit_fsize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """RLIMIT_FSIZE on the run: the artifact write fails part-way with EFBIG (no CAP_SYS_ADMIN needed)."""
    cli = cli_for(capsys)
    t = files_target(tmp_path)
    run_ok(cli, t)
    # six incompressible files of 600 KB: each fits under the 1 MiB limit as the staging mirror (rsync) writes
    # it, but the one artifact holding them all does not
    for i in range(6):
        (tmp_path / "src" / f"big{i}.bin").write_bytes(os.urandom(600_000))
    before = snapshot(t)
    with counted("store full (RLIMIT_FSIZE, EFBIG)"):
        done = t.run("run", t.job, preexec_fn=lambda: _fsize_limit(1 << 20))
        one_line_failure(done, "job site", "File too large")
        assert t.partials() == [] and snapshot(t) == before
        last = runs(t)[-1]
        assert last["outcome"] == "failed" and "File too large" in last["error"], dict(last)
        check_invariants(cli, t, before)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_store_full_tmpfs(tmp_path: Path, tmpfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real full filesystem (a 1 MiB tmpfs as the store): ENOSPC part-way; the operator grows it."""
    cli = cli_for(capsys)
    t = files_target(tmp_path, store=tmpfs)
    run_ok(cli, t)
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(3 << 20))
    before = snapshot(t)

    def grow_then_run() -> tuple[int, str]:
        subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)
        rc, _, err = cli("--config", str(t.config), "run", t.job)
        return rc, err

    with counted("store full (tmpfs, ENOSPC)"):
        done = t.run("run", t.job)
        one_line_failure(done, "job site", "No space left on device")
        assert t.partials() == [] and snapshot(t) == before
        assert runs(t)[-1]["outcome"] == "failed"
        check_invariants(cli, t, before, next_run=grow_then_run)


# ------------------------------------------------------------------------------------------ state read-only


def test_state_dir_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The state dir (catalog, locks) read-only after a good run. As root chmod stops nothing, so the dir is
    bind-mounted read-only onto itself (EROFS stops root too)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (and chmod 0500 does the same for others)")
    cli = cli_for(capsys)
    t = files_target(tmp_path)
    run_ok(cli, t)
    before = snapshot(t)
    state = str(t.state)
    mounted = subprocess.run(["mount", "--bind", state, state], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")

    def then_run() -> tuple[int, str]:
        rc, _, err = cli("--config", str(t.config), "run", t.job)
        return rc, err

    with counted("state dir read-only (ro bind mount)"):
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", state, state], check=True)
            with pytest.raises(OSError):
                (t.state / "probe").write_text("x")
            done = t.run("run", t.job)
            assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
            lines = [x for x in done.stderr.splitlines() if x.strip()]
            assert len(lines) == 1 and "Read-only file system" in lines[0], done.stderr
            assert t.partials() == [] and snapshot(t) == before, "nothing is committed that the catalog misses"
        finally:
            subprocess.run(["umount", state], check=True)
        check_invariants(cli, t, before, next_run=then_run)


# ------------------------------------------------------------------------------------------ damaged bytes


def test_flipped_byte_and_truncated_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = cli_for(capsys)
    t = files_target(tmp_path)
    for i in range(3):
        (tmp_path / "src" / f"n{i}.txt").write_text(f"{i}\n")
        run_ok(cli, t)
    good, flipped, cut = t.committed()
    before = snapshot(t)
    with counted("byte flipped in a stored artifact"), counted("manifest truncated"):
        art = t.job_dir / flipped / "files.tar.zst"
        data = bytearray(art.read_bytes())
        data[len(data) // 2] ^= 0x10
        art.write_bytes(bytes(data))
        man = t.job_dir / cut / "manifest.json"
        man.write_bytes(man.read_bytes()[: len(man.read_bytes()) // 2])

        rc, out, err = cli("--config", str(t.config), "verify", t.job, "--json")
        assert rc == 1
        report = {r["backup_id"]: r for r in json.loads(out)}
        assert report[good]["ok"] and not report[flipped]["ok"] and not report[cut]["ok"]
        bad = [a for a in report[flipped]["artifacts"] if not a["ok"]]
        assert [a["artifact"] for a in bad] == ["files.tar.zst"] and "sha256" in " ".join(bad[0]["problems"])
        assert "manifest.json" in json.dumps(report[cut])
        for bid in (flipped, cut):
            target = tmp_path / f"restore-{bid}"
            rc, _, err = cli("--config", str(t.config), "restore", t.job, "--backup", bid, "--to", str(target))
            assert rc != 0 and "Traceback" not in err, err
            assert not target.exists() or not any(target.iterdir()), f"restore of damaged {bid} wrote files"
        check_invariants(cli, t, before, damaged=frozenset({flipped, cut}), unindexable=frozenset({cut}))


# ------------------------------------------------------------------------------------------ durability order

Trace = list[tuple[str, ...]]


def durability_problems(trace: Trace, job_dir: Path, backup_id: str, artifacts: list[str]) -> list[str]:
    """What a recorded trace of ("fsync", path) and ("rename", src, dst) gets wrong about the commit: every
    artifact and the manifest fsynced before the rename, the partial directory fsynced after its last entry
    and before the rename, the job directory fsynced after it."""
    job = os.path.realpath(job_dir)
    partial = f"{job}/{backups_mod.PARTIAL_PREFIX}{backup_id}"
    final = f"{job}/{backup_id}"
    at = [i for i, e in enumerate(trace) if e == ("rename", partial, final)]
    if not at:
        return [f"{partial} was never renamed to {final}"]
    r = at[0]
    synced = [e[1] for e in trace[:r] if e[0] == "fsync"]
    problems = [f"{name} not fsynced before the rename" for name in [*artifacts, backups_mod.MANIFEST]
                if f"{partial}/{name}" not in synced]
    entries = [i for i, e in enumerate(trace[:r]) if e[0] == "fsync" and e[1].startswith(partial + "/")]
    last_entry = entries[-1] if entries else -1
    if ("fsync", partial) not in trace[last_entry + 1 : r]:
        problems.append("the partial directory was not fsynced after its files and before the rename")
    if ("fsync", job) not in trace[r + 1 :]:
        problems.append("the job directory was not fsynced after the rename")
    return problems


def record_trace(monkeypatch: pytest.MonkeyPatch, skip: Callable[[str], bool] | None = None) -> Trace:
    """Record os.fsync (the fd's path) and os.rename in this process; `skip`: a path whose fsyncs are
    dropped (neither done nor recorded), to show the checker catches a missing one."""
    trace: Trace = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = f"fd {fd}"
        if skip is not None and skip(path):
            return
        trace.append(("fsync", path))
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        trace.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return trace


@pytest.fixture
def two_databases(mariadb: MariaDB, tmp_path: Path) -> Target:
    dbs = [f"dur_{secrets.token_hex(3)}_{i}" for i in range(2)]
    for d in dbs:
        mariadb.execute(f"CREATE DATABASE {d}; CREATE TABLE {d}.t (id int PRIMARY KEY, v text);"
                        f"INSERT INTO {d}.t VALUES (1, 'one'), (2, 'two')")
    password = secrets.token_hex(10)
    mariadb.create_user("faultdur", password, grants=DUMP_GRANTS)
    job = {"type": "mysql", "schedule": "@daily", "host": mariadb.host, "port": mariadb.port, "user": "faultdur",
           "password_file": str(write_secret(tmp_path / "pw", password)), "databases": dbs}
    return Target.at(write_config(tmp_path / "etc", {"db": job}), "db")


def _run_traced(
    cli: Cli, t: Target, monkeypatch: pytest.MonkeyPatch, skip: Callable[[str], bool] | None = None
) -> list[str]:
    with monkeypatch.context() as m:
        trace = record_trace(m, skip)
        run_ok(cli, t)
    bid = t.committed()[-1]
    manifest = json.loads((t.job_dir / bid / "manifest.json").read_text())
    return durability_problems(trace, t.job_dir, bid, [a["file"] for a in manifest["artifacts"]])


def test_commit_durability_order(
    two_databases: Target, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, t = cli_for(capsys), two_databases
    with counted("commit durability order (recorded fsync/rename trace)"):
        assert _run_traced(cli, t, monkeypatch) == []
        assert len(json.loads((t.job_dir / t.committed()[-1] / "manifest.json").read_text())["artifacts"]) == 2

    # the checker is not vacuous: each fsync removed in turn is reported
    real_fsync_dir = fsutil_fsync_dir
    job_dir = os.path.realpath(t.job_dir)

    def no_job_dir_fsync(path: Path) -> None:
        if os.path.realpath(path) != job_dir:
            real_fsync_dir(path)

    with monkeypatch.context() as m:
        m.setattr(backups_mod, "fsync_dir", no_job_dir_fsync)
        assert _run_traced(cli, t, m) == ["the job directory was not fsynced after the rename"]

    def no_partial_fsync(path: Path) -> None:
        if not Path(path).name.startswith(backups_mod.PARTIAL_PREFIX):
            real_fsync_dir(path)

    with monkeypatch.context() as m:
        m.setattr(backups_mod, "fsync_dir", no_partial_fsync)
        assert _run_traced(cli, t, m) == ["the partial directory was not fsynced after its files and before the rename"]

    # an artifact never fsynced (neither by the pipeline nor by the commit)
    first = json.loads((t.job_dir / t.committed()[-1] / "manifest.json").read_text())["artifacts"][0]["file"]
    assert _run_traced(cli, t, monkeypatch, skip=lambda p: p.endswith("/" + first)) == [
        f"{first} not fsynced before the rename"
    ]


# ------------------------------------------------------------------------------------------ catalog immutable


@pytest.fixture
def immutable_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Target]:
    """Two files jobs after a good run each, then the catalog file made immutable (`chattr +i`, which stops
    root too): SQLite opens it read-only and every write fails."""
    cli = cli_for(capsys)
    t = files_target(tmp_path)
    jobs = t.config.parent / "jobs"
    (jobs / "other.toml").write_text((jobs / "site.toml").read_text())
    for job in ("site", "other"):
        rc, _, err = cli("--config", str(t.config), "run", job)
        assert rc == 0, err
    catalog = t.state / "catalog.sqlite"
    done = subprocess.run(["chattr", "+i", str(catalog)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
    try:
        yield t
    finally:
        subprocess.run(["chattr", "-i", str(catalog)], check=True)


def test_catalog_immutable_commits_nothing(immutable_catalog: Target, capsys: pytest.CaptureFixture[str]) -> None:
    cli, t = cli_for(capsys), immutable_catalog
    before = snapshot(t)
    with counted("catalog immutable (chattr +i)"):
        done = t.run("run", t.job)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "readonly database" in done.stderr, done.stderr
        assert t.partials() == [] and snapshot(t) == before
        subprocess.run(["chattr", "-i", str(t.state / "catalog.sqlite")], check=True)
        check_invariants(cli, t, before)


def test_catalog_write_failure_is_a_one_line_failure_per_job(immutable_catalog: Target) -> None:
    t = immutable_catalog
    done = t.run("run", "--all")
    assert done.returncode == 1
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert "unexpected error" not in done.stderr, done.stderr
    assert len(lines) == 2, done.stderr  # one line per job: run --all goes on with the other job
    assert lines[0].startswith("backupd: job other") and lines[1].startswith("backupd: job site"), lines
    assert all("readonly database" in x for x in lines), lines
