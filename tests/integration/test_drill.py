"""`backupd drill` end to end: real backups of a real MariaDB / Redis, restored into throwaway servers by the
real CLI in a subprocess; faults (tampered archive, lost rows, scratch server that cannot start, SIGTERM
half-way) each assert the exit code, the catalog record and that nothing is left running or on disk."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.mariadb import MariaDB
from backupd.scratch.mongo import MongoServer
from backupd.scratch.redis import Redis
from tests.conftest import wait_for


def backupd(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        check=False,
    )


def drills(cfg: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(cfg.parent / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM drills ORDER BY id"))
    finally:
        db.close()


def scratch_pids(cfg: Path) -> list[int]:
    """Processes whose command line points into this config's drill work area (mariadbd, redis-server)."""
    needle = str(cfg.parent / "state" / "drills").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def drill_dir_empty(cfg: Path) -> bool:
    d = cfg.parent / "state" / "drills"
    return not d.exists() or not any(d.iterdir())


def fake_bin(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def mysql_cfg(mariadb: MariaDB, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mysql job with one committed backup of a WordPress-shaped database."""
    base = tmp_path_factory.mktemp("drill")
    database = f"wpd_{secrets.token_hex(4)}"
    password = "dr'll#" + secrets.token_hex(6)
    seed_wordpress(mariadb, database, posts=200, user="drillbackup", password=password)
    job = {
        "type": "mysql",
        "schedule": "@daily",
        "host": mariadb.host,
        "port": mariadb.port,
        "user": "drillbackup",
        "password_file": str(write_secret(base / "pw", password)),
        "databases": [database],
    }
    cfg = write_config(base / "cfg", {"mysql": job})
    out = backupd(cfg, "run", "mysql")
    assert out.returncode == 0, out.stderr
    return cfg


def test_mysql_drill_passes_and_is_recorded(mysql_cfg: Path) -> None:
    out = backupd(mysql_cfg, "drill", "mysql", "--json")
    assert out.returncode == 0, out.stderr
    [report] = json.loads(out.stdout)
    assert report["outcome"] == "ok" and report["restore_seconds"] > 0
    checks = {c["check"]: c for c in report["checks"]}
    assert all(c["ok"] for c in checks.values())
    posts = next(v for k, v in checks.items() if k.endswith("rows wp_posts"))
    assert posts["expected"] == posts["actual"] == 200
    assert any(k.endswith("triggers") and v["actual"] == ["wp_users_audit"] for k, v in checks.items())
    assert any(k.endswith("events") and v["actual"] == ["wp_cleanup"] for k, v in checks.items())
    assert any(k.endswith("views") and v["actual"] == ["wp_published"] for k, v in checks.items())
    last = drills(mysql_cfg)[-1]
    assert last["outcome"] == "ok" and last["backup_id"] == report["backup_id"]
    assert len(json.loads(last["checks"])) == len(report["checks"])
    listed = json.loads(backupd(mysql_cfg, "list", "--json").stdout)
    assert listed[-1]["drilled"] == "ok"
    assert scratch_pids(mysql_cfg) == [] and drill_dir_empty(mysql_cfg)
    table = backupd(mysql_cfg, "drill", "mysql")
    assert table.returncode == 0 and "CHECK" in table.stdout and "EXPECTED" in table.stdout


def test_drill_detects_lost_rows(mysql_cfg: Path, tmp_path: Path) -> None:
    """A client that silently drops one row on the way in: the drill must notice and fail."""
    real = subprocess.run(["sh", "-c", "command -v mariadb"], capture_output=True, text=True).stdout.strip()
    env = fake_bin(tmp_path, "mariadb", f'sed "/^(7,\'option_6\',/d" | exec {real} "$@"\n')
    out = backupd(mysql_cfg, "drill", "mysql", "--json", env=env)
    assert out.returncode == 1, out.stderr
    [report] = json.loads(out.stdout)
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [c["check"].split()[-1] for c in bad] == ["wp_options"]
    assert bad[0]["expected"] == 40 and bad[0]["actual"] == 39
    assert "wp_options" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert drills(mysql_cfg)[-1]["outcome"] == "failed"
    assert scratch_pids(mysql_cfg) == [] and drill_dir_empty(mysql_cfg)


def test_drill_refuses_an_altered_archive(mysql_cfg: Path) -> None:
    rows = json.loads(backupd(mysql_cfg, "list", "--json").stdout)
    art = next(Path(rows[-1]["path"]).glob("*.sql.zst"))
    original = art.read_bytes()
    art.write_bytes(original[:-10] + bytes(b ^ 0xFF for b in original[-10:]))
    try:
        out = backupd(mysql_cfg, "drill", "mysql")
        assert out.returncode == 1
        assert "sha256" in out.stderr and "Traceback" not in out.stderr
        last = drills(mysql_cfg)[-1]
        assert last["outcome"] == "failed" and "sha256" in last["error"]
        assert json.loads(last["checks"]) == [], "no comparison may run on a tampered archive"
    finally:
        art.write_bytes(original)
    assert scratch_pids(mysql_cfg) == [] and drill_dir_empty(mysql_cfg)


def test_scratch_server_that_cannot_start(mysql_cfg: Path, tmp_path: Path) -> None:
    env = fake_bin(tmp_path, "mariadbd", "echo 'mariadbd: cannot start (simulated)' >&2\nexit 3\n")
    out = backupd(mysql_cfg, "drill", "mysql", env=env)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "mariadb" in lines[0] and "Traceback" not in out.stderr
    last = drills(mysql_cfg)[-1]
    assert last["outcome"] == "failed" and "mariadb" in last["error"]
    assert drill_dir_empty(mysql_cfg)


def test_sigterm_half_way_stops_scratch_server_and_cleans_up(mysql_cfg: Path, tmp_path: Path) -> None:
    real = subprocess.run(["sh", "-c", "command -v mariadb"], capture_output=True, text=True).stdout.strip()
    mark = tmp_path / "restoring"
    # slow only for the restore pipe (the one call without -N): loop in short sleeps so nothing lingers
    body = (
        f'case "$*" in *" -N"*) exec {real} "$@";; esac\n'
        f"touch {mark}\n"
        "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
        f'exec {real} "$@"\n'
    )
    env = {**os.environ, **fake_bin(tmp_path, "mariadb", body)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(mysql_cfg), "drill", "mysql"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_for(mark.exists)
    during = scratch_pids(mysql_cfg)
    assert during, "a scratch mariadbd should be running under the drill's work dir"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "Traceback" not in err
    for pid in during:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    assert scratch_pids(mysql_cfg) == [] and drill_dir_empty(mysql_cfg)
    last = drills(mysql_cfg)[-1]
    assert last["outcome"] == "failed" and "interrupted" in last["error"]


def test_drill_without_backups_fails_cleanly(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", {"site": {"type": "files", "schedule": "@daily", "source": "/srv"}})
    out = backupd(cfg, "drill")
    assert out.returncode == 1 and "no verified backup" in out.stderr
    assert drills(cfg)[-1]["outcome"] == "failed"
    out = backupd(cfg, "drill", "nosuch")
    assert out.returncode == 2


# ------------------------------------------------------------------ Redis


def test_redis_drill_loads_rdb_into_throwaway_server(
    redis_factory: Callable[..., Redis], sshd: SSHD, tmp_path: Path
) -> None:
    master = redis_factory()
    replica = redis_factory(master=master)
    replica.wait_replica_linked()
    with master.client() as c:
        pipe = c.pipeline(transaction=False)
        for i in range(1500):
            pipe.set(f"k:{i}", i)
            pipe.hset(f"h:{i}", mapping={"a": i})
        pipe.execute()
        target = c.info("replication")["master_repl_offset"]
    with replica.client() as r:
        wait_for(lambda: r.info("replication").get("slave_repl_offset", -1) >= target)
    job: dict[str, Any] = {"type": "redis", "schedule": "@daily", "host": replica.host, "port": replica.port}
    job["ssh"] = sshd.ssh_config()
    cfg = write_config(tmp_path / "cfg", {"redis": job})
    run = backupd(cfg, "run", "redis")
    assert run.returncode == 0, run.stderr
    # the loader itself, in-process: real redis-server on the real RDB, keys counted by the server
    from contextlib import ExitStack

    from backupd.sources.base import DrillContext
    from backupd.sources.redis.load import drill_redis
    from backupd.store.backups import Store

    [stored] = Store(cfg.parent / "store").backups("redis")
    work = tmp_path / "work"
    work.mkdir()
    with ExitStack() as stack:
        result = drill_redis(stored, DrillContext(stack, work))
    [direct], seconds = result.checks, result.restore_seconds
    assert direct.ok and direct.actual == 3000 and seconds > 0
    assert list(work.iterdir()) == []

    out = backupd(cfg, "drill", "redis", "--json")
    assert out.returncode == 0, out.stderr
    [report] = json.loads(out.stdout)
    [check] = report["checks"]
    assert check["expected"] == check["actual"] == 3000
    assert scratch_pids(cfg) == [] and drill_dir_empty(cfg)

    dest = tmp_path / "rdb"
    out = backupd(cfg, "restore", "redis", "--to", str(dest))
    assert out.returncode == 0, out.stderr
    assert (dest / "dump.rdb").read_bytes()[:5] == b"REDIS"
    out = backupd(cfg, "restore", "redis", "--to", f"redis://{master.host}:{master.port}")
    assert out.returncode == 1 and "cannot load" in out.stderr and "CONFIG GET dir" in out.stderr


# ------------------------------------------------------------------ MongoDB


def test_mongo_drill_and_restore_into_second_server(mongo_factory: Callable[..., Any], tmp_path: Path) -> None:
    source = mongo_factory()
    other = mongo_factory()
    with source.client() as c:
        c["shop"]["orders"].insert_many([{"n": i, "item": f"thing {i}"} for i in range(700)])
        c["shop"]["users"].insert_many([{"u": i} for i in range(45)])
    job = {"type": "mongodb", "schedule": "@daily", "uri": source.uri, "engine": "native", "oplog": False}
    cfg = write_config(tmp_path / "cfg", {"mongo": job})
    run = backupd(cfg, "run", "mongo")
    assert run.returncode == 0, run.stderr
    out = backupd(cfg, "drill", "mongo", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    [report] = json.loads(out.stdout)
    counts = {c["check"]: c["actual"] for c in report["checks"]}
    assert counts["mongo shop.orders documents"] == 700 and counts["mongo shop.users documents"] == 45
    assert scratch_pids(cfg) == [] and drill_dir_empty(cfg)

    out = backupd(cfg, "restore", "mongo", "--to", other.uri)
    assert out.returncode == 0, out.stderr
    with other.client() as c:
        assert c["shop"]["orders"].count_documents({}) == 700
    with source.client() as c:  # the source is untouched (no duplicates from a wrong-place restore)
        assert c["shop"]["orders"].count_documents({}) == 700
    out = backupd(cfg, "restore", "mongo", "--to", other.uri)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1

    # --ns-from/--ns-to: the same backup beside the first restore, under another database name
    out = backupd(cfg, "restore", "mongo", "--to", other.uri, "--ns-from", "shop.$c$", "--ns-to", "shop_copy.$c$")
    assert out.returncode == 0, out.stderr
    with other.client() as c:
        assert c["shop_copy"]["orders"].count_documents({}) == 700 and c["shop_copy"]["users"].count_documents({}) == 45
        assert c["shop"]["orders"].count_documents({}) == 700  # the first restore is untouched
    out = backupd(cfg, "restore", "mongo", "--to", other.uri, "--ns-from", "shop.$c$")
    assert out.returncode == 2 and "in pairs" in out.stderr, out.stderr


LONG_DB = "analytics_" + "x" * 40  # drill_<id>_<this> is over MongoDB's 63 bytes: cut and hashed


def _mongo_job_with_target(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path, docs: int = 700
) -> tuple[Path, MongoServer, MongoServer, str]:
    """(config, source, target, backup id): one committed backup of `source` (shop, crm and a long-named
    database); the job's `[drill] target` is `target`, which holds data of its own: `billing`, and a `shop`
    of the same name as the source's that a drill restoring under real names would collide with."""
    source, target = mongo_factory(), mongo_factory()
    with source.client() as c:
        c["shop"]["orders"].insert_many([{"n": i, "item": f"thing {i}"} for i in range(docs)])
        c["shop"]["users"].insert_many([{"u": i} for i in range(45)])
        c["crm"]["leads"].insert_many([{"l": i} for i in range(12)])
        c[LONG_DB]["events"].insert_many([{"e": i} for i in range(7)])
    with target.client() as c:
        c["billing"]["invoices"].insert_many([{"inv": i, "eur": i * 10} for i in range(30)])
        c["shop"]["orders"].insert_many([{"inv": i, "staging": True} for i in range(5)])
    job = {
        "type": "mongodb",
        "schedule": "@daily",
        "uri": source.uri,
        "engine": "native",
        "oplog": False,
        "drill": {"target": f"{target.uri}?serverSelectionTimeoutMS=3000"},
    }
    cfg = write_config(tmp_path / "cfg", {"mongo": job})
    run = backupd(cfg, "run", "mongo")
    assert run.returncode == 0, run.stderr
    from backupd.store.backups import Store

    [stored] = Store(cfg.parent / "store").backups("mongo")
    return cfg, source, target, stored.backup_id


def _drill_dbs(server: MongoServer) -> list[str]:
    with server.client() as c:
        return sorted(n for n in c.list_database_names() if n.startswith("drill_"))


def _own_data(server: MongoServer) -> list[dict[str, Any]]:
    """The target's own documents (billing.invoices, then shop.orders)."""
    with server.client() as c:
        return [d for coll in (c["billing"]["invoices"], c["shop"]["orders"]) for d in coll.find({}).sort("inv")]


def test_drill_db_names_fit_mongodb_and_stay_distinct() -> None:
    from backupd.sources.mongo.drill import drill_db_name

    assert drill_db_name("20240102T030405Z", "shop") == "drill_20240102t030405z_shop"
    a, b = drill_db_name("20240102T030405Z", "a" * 60 + "x"), drill_db_name("20240102T030405Z", "a" * 60 + "y")
    assert a != b and a.startswith("drill_20240102t030405z_aaa") and len(a.encode()) == 63
    wide = drill_db_name("20240102T030405Z", "\u00e9" * 40)  # cut on a character boundary, not inside one
    assert len(wide.encode()) <= 63 and wide.encode().decode() == wide


def test_mongo_drill_into_configured_target_renames_and_drops(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path
) -> None:
    cfg, _, target, backup_id = _mongo_job_with_target(mongo_factory, tmp_path)
    own = _own_data(target)
    out = backupd(cfg, "drill", "mongo", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    [report] = json.loads(out.stdout)
    assert report["outcome"] == "ok" and report["backup_id"] == backup_id
    checks = {c["check"]: (c["expected"], c["actual"]) for c in report["checks"]}
    assert checks == {
        "mongo shop.orders documents": (700, 700),
        "mongo shop.users documents": (45, 45),
        "mongo crm.leads documents": (12, 12),
        f"mongo {LONG_DB}.events documents": (7, 7),
    }
    with target.client() as c:
        names = set(c.list_database_names())
    assert not {n for n in names if n.startswith("drill_")}, "the drill's databases must be dropped"
    assert not names & {"crm", LONG_DB}, "nothing may be restored under its real name"
    assert _own_data(target) == own and len(own) == 30 + 5
    assert scratch_pids(cfg) == [] and drill_dir_empty(cfg)
    # proof the drill used that server: without it the drill fails, naming it
    target.stop()
    out = backupd(cfg, "drill", "mongo")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert f"{target.host}:{target.port}" in out.stderr and "Traceback" not in out.stderr
    assert drills(cfg)[-1]["outcome"] == "failed"


def test_mongo_target_drill_that_fails_or_is_interrupted_still_drops(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path
) -> None:
    """In-process, as test_redis does: a manifest edited on disk would fail verification before any restore,
    so the lost document is edited into the stats handed to the restore step, then an interrupt follows."""
    from contextlib import ExitStack
    from dataclasses import replace

    from backupd.config import load_config
    from backupd.engine.signals import Terminated
    from backupd.sources.base import DrillContext
    from backupd.sources.mongo.drill import drill_mongo
    from backupd.store.backups import Store

    cfg, _, target, backup_id = _mongo_job_with_target(mongo_factory, tmp_path)
    own = _own_data(target)
    job = load_config(cfg).job("mongo")
    [stored] = Store(cfg.parent / "store").backups("mongo")
    arts = json.loads(json.dumps(stored.manifest["artifacts"]))
    arts[0]["stats"]["namespaces"]["shop.orders"]["documents"] = 701
    work = tmp_path / "work"
    work.mkdir()
    during: list[str] = []
    with pytest.raises(Terminated), ExitStack() as stack:
        edited = replace(stored, manifest={**stored.manifest, "artifacts": arts})
        checks = drill_mongo(job, edited, DrillContext(stack, work)).checks
        during = _drill_dbs(target)
        with target.client() as c:
            restored = c[f"drill_{backup_id.lower()}_shop"]["orders"].count_documents({})
        raise Terminated(signal.SIGTERM)
    assert [(c.check, c.expected, c.actual) for c in checks if not c.ok] == [("mongo shop.orders documents", 701, 700)]
    assert restored == 700 and len(during) == 3 and f"drill_{backup_id.lower()}_crm" in during
    assert _drill_dbs(target) == [], "a failed, interrupted drill must still drop its databases"
    assert _own_data(target) == own


def test_mongo_target_drill_sigterm_during_restore_drops(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path
) -> None:
    cfg, _, target, _ = _mongo_job_with_target(mongo_factory, tmp_path, docs=40000)
    own = _own_data(target)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "drill", "mongo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: bool(_drill_dbs(target)))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert _drill_dbs(target) == [] and _own_data(target) == own
    assert drill_dir_empty(cfg)
    last = drills(cfg)[-1]
    assert last["outcome"] == "failed" and "interrupted" in last["error"]


def test_mongo_target_drill_refuses_a_used_drill_database(
    mongo_factory: Callable[..., MongoServer], tmp_path: Path
) -> None:
    cfg, _, target, backup_id = _mongo_job_with_target(mongo_factory, tmp_path)
    own = _own_data(target)
    taken = f"drill_{backup_id.lower()}_crm"
    with target.client() as c:
        c[taken]["mine"].insert_many([{"keep": i} for i in range(3)])
    out = backupd(cfg, "drill", "mongo")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert taken in out.stderr and "not empty" in out.stderr and f"{target.host}:{target.port}" in out.stderr
    assert drills(cfg)[-1]["outcome"] == "failed"
    assert _drill_dbs(target) == [taken], "refused before restoring anything"
    with target.client() as c:
        assert c[taken]["mine"].count_documents({}) == 3 and c[taken].list_collection_names() == ["mine"]
    assert _own_data(target) == own


# ------------------------------------------------------------------ WordPress (database + files)


def test_wordpress_drill_compares_database_and_tree(
    mariadb: MariaDB, sshd: SSHD, mysql_cfg: Path, tmp_path: Path
) -> None:
    job = json.loads(json.dumps(_job_of(mysql_cfg)))
    site = make_site(tmp_path / "www", uploads=6)
    wp = {
        "type": "wordpress",
        "schedule": "@daily",
        "mysql": {k: job[k] for k in ("host", "port", "user", "password_file", "databases")},
        "files": {"source": str(site), "exclude": ["wp-content/cache/"]},
        "ssh": sshd.ssh_config(),
    }
    cfg = write_config(tmp_path / "cfg", {"wordpress": wp})
    run = backupd(cfg, "run", "wordpress")
    assert run.returncode == 0, run.stderr
    out = backupd(cfg, "drill", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    [report] = json.loads(out.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["files files"]["actual"] == 6 + 3 and checks["files symlinks"]["actual"] == 1
    assert checks["files tree_sha256"]["ok"] and len(checks["files tree_sha256"]["actual"]) == 64
    assert any(k.endswith("rows wp_posts") and c["actual"] == 200 for k, c in checks.items())
    assert scratch_pids(cfg) == [] and drill_dir_empty(cfg)


def _job_of(cfg: Path) -> dict[str, Any]:
    import tomllib

    with (cfg.parent / "jobs" / "mysql.toml").open("rb") as fh:
        return tomllib.load(fh)


def test_drill_into_configured_target_drops_its_database(
    mysql_cfg: Path, mariadb_factory: Callable[..., MariaDB], tmp_path: Path
) -> None:
    shared = mariadb_factory()
    job = {**_job_of(mysql_cfg), "drill": {"target": f"mysql://root@{shared.host}:{shared.port}"}}
    cfg = write_config(tmp_path / "cfg", {"mysql": job})
    store = mysql_cfg.parent / "store"
    (cfg.parent / "backupd.toml").write_text(
        (cfg.parent / "backupd.toml").read_text().replace(str(cfg.parent / "store"), str(store))
    )
    before = {r[0] for r in shared.execute("SHOW DATABASES")}
    env = {"BACKUPD_DRILL_PASSWORD_FILE": str(write_secret(tmp_path / "pw", shared.root_password))}
    out = backupd(cfg, "drill", "mysql", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["outcome"] == "ok"
    assert {r[0] for r in shared.execute("SHOW DATABASES")} == before, "the drill's database must be dropped"
    assert scratch_pids(cfg) == []
    # proof it really used that server: a wrong password there fails the drill, naming it
    env = {"BACKUPD_DRILL_PASSWORD_FILE": str(write_secret(tmp_path / "bad", "wrong"))}
    out = backupd(cfg, "drill", "mysql", env=env)
    assert out.returncode == 1 and "Access denied" in out.stderr and str(shared.port) in out.stderr
