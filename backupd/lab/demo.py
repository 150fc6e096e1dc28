"""`backupd demo`: the whole cycle against local sandbox servers, for a first look and a smoke test.

It starts throwaway servers (MariaDB, OpenSSH; more as sources land), fills them with sample data, writes a
config pointing at them, runs every job through the real CLI code path, verifies the results and prints them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.errors import EXIT_FAILED, EXIT_OK
from backupd.lab.content import DUMP_GRANTS, make_site, seed_wordpress, write_config, write_secret
from backupd.lab.s3 import MotoS3
from backupd.lab.sshd import SSHD
from backupd.scratch.base import ScratchError, free_port
from backupd.scratch.mariadb import MariaDB
from backupd.scratch.mongo import MongoServer
from backupd.scratch.postgres import Postgres, server_bindir
from backupd.scratch.redis import Redis
from backupd.store.catalog import Catalog
from backupd.store.locks import job_running


@dataclass
class DemoEnv:
    """Everything the demo stages share: the demo directory, the running servers, the jobs to configure."""

    base: Path
    stack: ExitStack
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None
    cli: Callable[[Sequence[str]], int] = field(default=lambda argv: EXIT_FAILED)  # `backupd` itself, in-process


class Skipped(Exception):
    """A stage this machine cannot run (a server or an optional package is missing): said, then skipped."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules, a broken install
        return False


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def stage_wordpress(env: DemoEnv) -> None:

    say("starting a sandbox MariaDB and OpenSSH server")
    db = env.stack.enter_context(MariaDB(env.base / "servers" / "mariadb"))
    sshd = env.stack.enter_context(SSHD(env.base / "servers" / "sshd"))
    env.servers.update(mariadb=db, sshd=sshd)
    print(f"   mariadb on 127.0.0.1:{db.port}, sshd on 127.0.0.1:{sshd.port}")
    password = "demo-secret-" + db.root_password[:8]
    seed_wordpress(db, "wordpress", posts=500, user="backup", password=password, grants=DUMP_GRANTS + ", RELOAD")
    site = make_site(env.base / "web" / "wordpress", uploads=30)
    secrets = env.base / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    pw = write_secret(secrets / "wordpress-db.password", db.password_for("backup"))
    env.jobs["wordpress"] = {
        "type": "wordpress",
        "schedule": "30 2 * * *",
        "mysql": {
            "host": db.host,
            "port": db.port,
            "user": "backup",
            "password_file": str(pw),
            "databases": ["wordpress"],
            "via_ssh": True,
        },
        "files": {"source": str(site), "exclude": ["wp-content/cache/"]},
        "ssh": sshd.ssh_config(),
    }


def stage_mongo(env: DemoEnv) -> None:
    """A scratch MongoDB (mongod if installed, else nx-27017) with a few collections, dumped natively
    unless mongodump is installed (engine auto)."""
    import datetime


    if shutil.which("mongod") is None and not _installed("nx_27017"):
        raise Skipped("MongoDB: no mongod on PATH and no nx-27017 stand-in (pip install 'backupd[demo]')")
    say("starting a sandbox MongoDB server")
    server = env.stack.enter_context(MongoServer(env.base / "servers" / "mongo"))
    env.servers["mongo"] = server
    print(f"   {server.kind} on {server.uri}")
    with server.client() as c:
        start = datetime.datetime(2024, 1, 1)
        c.shop.customers.insert_many(
            [{"_id": i, "name": f"customer {i}", "since": start + datetime.timedelta(days=i)} for i in range(500)]
        )
        c.shop.customers.create_index("name")
        c.shop.orders.insert_many([{"customer": i % 500, "total": i * 1.25, "lines": [i, i + 1]} for i in range(3000)])
        c.shop.create_collection("returns")
        c.logs.events.insert_many([{"level": "info", "msg": f"event {i}"} for i in range(1000)])
    env.jobs["mongo"] = {"type": "mongodb", "schedule": "0 3 * * *", "uri": server.uri}


def stage_redis(env: DemoEnv) -> None:
    """A password-protected Redis master + replica with keys of every type; the job backs up the replica,
    reaching its dump file through the demo's sshd (the WordPress stage's one, else a new one)."""
    import secrets as secrets_mod


    say("starting a sandbox Redis master + replica")
    password = "demo-" + secrets_mod.token_hex(8)
    master = env.stack.enter_context(Redis(env.base / "servers" / "redis", password=password))
    with master.client() as c:
        pipe = c.pipeline(transaction=False)
        for i in range(1000):
            pipe.set(f"session:{i}", f"user-{i % 97}", ex=86400 if i % 2 else None)
            pipe.hset(f"user:{i}", mapping={"name": f"user {i}", "visits": i})
            pipe.rpush(f"queue:{i % 50}", f"job-{i}")
            pipe.sadd(f"tags:{i % 100}", f"t{i}")
            pipe.zadd("leaderboard", {f"player{i}": i * 3})
            pipe.xadd("events", {"n": str(i)})
        pipe.execute()
    replica = env.stack.enter_context(Redis(env.base / "servers" / "redis", master=master, password=password))
    replica.wait_replica_linked()
    sshd = env.servers.get("sshd")
    if sshd is None:
        sshd = env.stack.enter_context(SSHD(env.base / "servers" / "sshd"))
        env.servers["sshd"] = sshd
    env.servers.update(redis_master=master, redis_replica=replica)
    print(f"   master on 127.0.0.1:{master.port}, replica on 127.0.0.1:{replica.port}, sshd on {sshd.port}")
    secrets_dir = env.base / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    pw = write_secret(secrets_dir / "redis.password", password)
    env.jobs["redis"] = {
        "type": "redis",
        "schedule": "15 * * * *",
        "host": replica.host,
        "port": replica.port,
        "password_file": str(pw),
        "require_replica": True,
        "bgsave": True,
        "ssh": sshd.ssh_config(),
    }


def stage_postgres(env: DemoEnv) -> None:
    """A scratch PostgreSQL with a small shop schema (a view, a sequence, a function), dumped per database in
    the custom format, its roles once; skipped with a line where Debian's postgresql is not installed."""
    try:
        server_bindir()
    except ScratchError as exc:
        raise Skipped(f"PostgreSQL: {str(exc).removeprefix('scratch: ')}") from None
    say("starting a sandbox PostgreSQL server")
    server = env.stack.enter_context(Postgres(env.base / "servers" / "postgres"))
    password = "demo-" + secrets.token_hex(8)
    server.create_role("backup", password, "LOGIN SUPERUSER")
    server.execute("CREATE DATABASE shop;")
    server.execute(
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, since date);"
        "INSERT INTO customers (name, since) SELECT 'customer ' || i, DATE '2024-01-01' + i"
        " FROM generate_series(1, 500) AS i;"
        "CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers, total numeric(10,2),"
        " lines jsonb);"
        "INSERT INTO orders (customer, total, lines) SELECT 1 + i % 500, i * 1.25, jsonb_build_array(i, i + 1)"
        " FROM generate_series(1, 3000) AS i;"
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 1000;"
        "CREATE FUNCTION order_count(c int) RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM orders"
        " WHERE customer = c';",
        database="shop",
    )
    secrets_dir = env.base / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    pw = write_secret(secrets_dir / "postgres.password", password)
    print(f"   PostgreSQL on {server.host}:{server.port}, database shop")
    env.jobs["postgres"] = {
        "type": "postgresql",
        "schedule": "15 3 * * *",
        "host": server.host,
        "port": server.port,
        "user": "backup",
        "password_file": str(pw),
        "databases": ["shop"],
    }


def stage_s3(env: DemoEnv) -> None:
    """A sandbox S3 server: every committed demo backup is copied there and checked against its manifest."""
    if not _installed("moto"):
        raise Skipped("S3: moto's S3 server is not installed (pip install 'backupd[demo]')")
    s3 = env.stack.enter_context(MotoS3(env.base / "servers" / "s3"))
    s3.create_bucket("demo-backups")
    os.environ.update(s3.env())  # credentials travel in the environment, as boto3 documents
    env.servers["s3"] = s3
    env.settings["s3"] = {
        "enabled": True,
        "bucket": "demo-backups",
        "prefix": "backupd/",
        "endpoint_url": s3.endpoint_url,
        "region": "us-east-1",
    }
    print(f"   S3 (moto) on {s3.endpoint_url}, bucket demo-backups")


STAGES: list[Callable[[DemoEnv], None]] = [stage_wordpress, stage_mongo, stage_redis, stage_postgres, stage_s3]


def daemon_catch_up(env: DemoEnv, cfg: str, jobs: list[str]) -> bool:
    """Start the daemon briefly: the jobs that never ran are caught up at start; show status and metrics."""

    say(f"backupd daemon (briefly): catch-up of {', '.join(jobs)}, then status and /metrics")
    listen = env.settings["http"]["listen"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", cfg, "daemon"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ok = False
    try:
        catalog = Catalog(env.base / "state")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            runs = {j: catalog.last_run(j) for j in jobs}
            if all(r is not None for r in runs.values()) and not any(job_running(env.base / "state", j) for j in jobs):
                ok = all(r is not None and r["outcome"] == "ok" for r in runs.values())
                break
            time.sleep(0.2)
        catalog.close()
        for j in jobs:
            print(f"   {j}: caught up by the daemon: {'ok' if ok else 'not ok'}")
        try:
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
                lines = resp.read().decode().splitlines()
            shown = [
                x
                for x in lines
                if x.startswith(
                    ("backupd_last_success_timestamp_seconds{", "backupd_job_overdue{", "backupd_runs_total{")
                )
            ]
            print("   GET /metrics (excerpt):")
            for line in shown[:12]:
                print(f"     {line}")
        except OSError as exc:
            print(f"   /metrics not reachable: {exc}")
            ok = False
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    say("backupd status")
    ok &= env.cli(["--config", cfg, "status"]) == EXIT_OK
    return ok


def run_demo(cli: Callable[[Sequence[str]], int], directory: Path | None = None, keep: bool = False) -> int:
    """The whole cycle, driving `cli` (the CLI's `main`, passed in so the demo sits below the CLI)."""

    base = directory or Path(tempfile.mkdtemp(prefix="backupd-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    ok = True
    with ExitStack() as stack:
        env = DemoEnv(base=base, stack=stack, cli=cli)
        skipped: list[str] = []
        try:
            for stage in STAGES:
                try:
                    stage(env)
                except Skipped as why:
                    say(f"skipping {why}")
                    skipped.append(str(why).split(":", 1)[0])
        except Exception as exc:  # a sandbox server that cannot start: one line, not a traceback
            print(
                f"backupd: demo: setting up the sandbox failed: {str(exc).splitlines()[0][:300]}",
                file=sys.stderr,
            )
            return EXIT_FAILED

        env.settings.setdefault("http", {"listen": f"127.0.0.1:{free_port()}"})
        settings = {
            "storage": {"root": str(base / "store")},
            "state": {"dir": str(base / "state")},
            "logging": {"format": "console"},
            **env.settings,
        }
        env.config_path = write_config(base / "etc", env.jobs, settings=settings)
        cfg = str(env.config_path)
        say(f"config written to {cfg}")
        print(env.config_path.read_text())
        say("backupd check-config")
        ok &= env.cli(["--config", cfg, "check-config"]) == EXIT_OK
        names = list(env.jobs)
        say(f"backupd run {names[0]}")
        ok &= env.cli(["--config", cfg, "run", names[0]]) == EXIT_OK
        if len(names) > 1:
            ok &= daemon_catch_up(env, cfg, names[1:])
        say("backupd list")
        env.cli(["--config", cfg, "list"])
        say("backupd verify")
        ok &= env.cli(["--config", cfg, "verify"]) == EXIT_OK
        for hook in AFTER_RUN:
            ok &= hook(env, cfg)
        say("result")
        print(f"   demo {'succeeded' if ok else 'FAILED'}; config, store and state under {base}")
        if skipped:
            print(f"   skipped (not installed here): {', '.join(skipped)}")
    if not keep and directory is None:
        shutil.rmtree(base, ignore_errors=True)
        print(f"   (removed {base}; use --keep or --dir to keep it)")
    sys.stdout.flush()
    return EXIT_OK if ok else EXIT_FAILED


def s3_and_prune(env: DemoEnv, config_path: str) -> bool:
    """Show that the copies in S3 match the manifests, and what retention would keep and why."""

    ok = True
    if "s3" in env.servers:
        say("backupd verify --s3 (local archives and their copies in the bucket)")
        ok &= env.cli(["--config", config_path, "verify", "--s3"]) == EXIT_OK
    say("backupd prune --dry-run")
    ok &= env.cli(["--config", config_path, "prune", "--dry-run"]) == EXIT_OK
    return ok



def drill_demo_jobs(env: DemoEnv, config_path: str) -> bool:
    """Restore every demo job's newest backup into throwaway servers and print the comparison table."""

    say("backupd drill (restore into scratch servers and compare with the dump-time stats)")
    return env.cli(["--config", config_path, "drill"]) == EXIT_OK



# What the demo shows once every job has a backup, in order.
AFTER_RUN: list[Callable[[DemoEnv, str], bool]] = [s3_and_prune, drill_demo_jobs]
