"""PostgreSQL jobs end to end: two real servers from backupd.scratch.postgres (the source, and a target so
"restored into the wrong place" fails), the real CLI in a subprocess.

The source database has what a restore gets wrong first: bytea, jsonb, text with quotes and backslashes,
an empty table, a larger one, a view, a materialized view, a function, a trigger, a sequence, a large
object, a database-level setting and a non-default owner role.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backupd.lab.content import write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.scratch.postgres import Postgres
from backupd.sources.postgresql.client import (
    artifact_name,
    escape_name,
    passfile_text,
    remote_command,
    unescape_name,
)

SCHEMA = r"""
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TABLE app.blobs (id int PRIMARY KEY, payload bytea);
INSERT INTO app.blobs SELECT i, decode(md5(i::text) || '00ff0a5c', 'hex') FROM generate_series(1, 200) i;
CREATE TABLE app.docs (id int PRIMARY KEY, body jsonb);
INSERT INTO app.docs SELECT i, jsonb_build_object('n', i, 's', E'it''s "q" \\ back\nslash', 'a', jsonb_build_array(i))
    FROM generate_series(1, 150) i;
CREATE TABLE app.notes (id serial PRIMARY KEY, note text, updated timestamptz);
INSERT INTO app.notes (note) VALUES (E'it''s "quoted"'), (E'back\\slash'), (E'new\nline'), (E'\\.'), (NULL),
    ('-- PostgreSQL database dump complete');
CREATE TABLE app.empty (id int);
CREATE TABLE public.big (id bigint PRIMARY KEY, name text, score double precision);
INSERT INTO public.big SELECT i, 'name-' || i, i / 7.0 FROM generate_series(1, 20000) i;
CREATE VIEW app.note_view AS SELECT id, note FROM app.notes;
CREATE MATERIALIZED VIEW app.big_stats AS SELECT count(*) AS n FROM public.big;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated := now(); RETURN NEW; END $$;
CREATE FUNCTION app.add(a integer, b integer) RETURNS integer LANGUAGE sql AS 'SELECT a + b';
CREATE TRIGGER notes_touch BEFORE UPDATE ON app.notes FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE SEQUENCE app.counter;
SELECT setval('app.counter', 42);
SELECT lo_from_bytea(0, 'large object payload');
RESET ROLE;
"""
TABLES = ["app.blobs", "app.docs", "app.empty", "app.notes", "public.big"]


def backupd(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def row_counts(pg: Postgres, database: str) -> dict[str, int]:
    union = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
    return {r[0]: int(r[1]) for r in pg.execute(union, database)}


def db_acl(pg: Postgres, database: str) -> list[tuple[str, ...]]:
    return pg.execute(
        "SELECT coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'PUBLIC'), a.privilege_type FROM pg_database d,"
        f" aclexplode(d.datacl) a WHERE d.datname = '{database}' ORDER BY 1, 2"
    )


def role_settings(pg: Postgres, database: str) -> list[tuple[str, ...]]:
    return pg.execute(
        "SELECT pg_get_userbyid(s.setrole), array_to_string(s.setconfig, ',') FROM pg_db_role_setting s"
        f" JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{database}' AND s.setrole <> 0"
    )


def db_setting(pg: Postgres, database: str) -> tuple[str, list[str]]:
    rows = pg.execute(
        "SELECT pg_get_userbyid(d.datdba), coalesce((SELECT array_to_json(setconfig)::text FROM pg_db_role_setting"
        f" WHERE setdatabase = d.oid AND setrole = 0), '[]') FROM pg_database d WHERE datname = '{database}'"
    )
    return rows[0][0], json.loads(rows[0][1])


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@dataclass
class Source:
    base: Path
    pg: Postgres
    database: str
    password_file: Path

    def job(self, **overrides: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "type": "postgresql",
            "schedule": "@daily",
            "host": self.pg.host,
            "port": self.pg.port,
            "user": "bkp",
            "password_file": str(self.password_file),
            "databases": [self.database],
        }
        job.update(overrides)
        return job

    def config(self, name: str, **overrides: Any) -> Path:
        return write_config(self.base / name, {"pg": self.job(**overrides)})

    def backed_up(self, name: str, **overrides: Any) -> Path:
        cfg = self.config(name, **overrides)
        out = backupd(cfg, "run", "pg")
        assert out.returncode == 0, out.stderr
        return cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    base = tmp_path_factory.mktemp("pg")
    with Postgres() as pg:
        password = "p:w\\d 'q\"" + secrets.token_hex(6)
        pg.create_role("bkp", password, "LOGIN SUPERUSER")
        pg.create_role("app_owner", "owner-secret", "LOGIN")
        database = "shop data.v1"
        pg.execute(f'CREATE DATABASE "{database}" OWNER app_owner')
        pg.execute(f"ALTER DATABASE \"{database}\" SET work_mem = '8MB'")
        pg.execute(f'ALTER DATABASE "{database}" SET search_path = "$user", app, public')
        pg.create_role("reader", None, "NOLOGIN")
        pg.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        pg.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO reader')
        pg.execute(f"ALTER ROLE reader IN DATABASE \"{database}\" SET statement_timeout = '5min'")
        pg.execute(SCHEMA, database)
        yield Source(base, pg, database, write_secret(base / "db.password", password))


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[Postgres, dict[str, str]]]:
    """The second server, and the environment handing `backupd restore` its superuser's password file."""
    with Postgres() as pg:
        pw = Path(pg.dir) / "target.password"
        write_secret(pw, pg.password)
        yield pg, {"BACKUPD_RESTORE_PASSWORD_FILE": str(pw)}


@pytest.fixture(scope="module")
def shared(source: Source) -> Path:
    """One backup of every database on the source (`databases` empty), which several tests read."""
    return source.backed_up("shared", databases=[])


def shares_store(source: Source, name: str, shared: Path, **overrides: Any) -> Path:
    """A config of its own (other job keys) over the shared backup's store and catalog."""
    base = shared.parent
    settings = {"storage": {"root": str(base / "store")}, "state": {"dir": str(base / "state")}}
    return write_config(source.base / name, {"pg": source.job(databases=[], **overrides)}, settings=settings)


def newest(cfg: Path, job: str = "pg") -> Path:
    rows = json.loads(backupd(cfg, "list", job, "--json").stdout)
    return Path(rows[-1]["path"])


# ------------------------------------------------------------------ pure helpers


def test_artifact_names_survive_any_database_name() -> None:
    names = ["shop", "my db", "a/b", "100%", "x.y", "café", "globals", "db-globals", "-", "a%2Fb", "\n", "日本"]
    escaped = [escape_name(n) for n in names]
    assert all(set(e) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%") for e in escaped)
    assert [unescape_name(e) for e in escaped] == names
    files = {artifact_name(n) for n in names}
    assert len(files) == len(names) and "globals" not in files
    assert artifact_name("a/b") == "db-a%2Fb" and artifact_name("x.y") == "db-x%2Ey"
    assert artifact_name("café") == "db-caf%C3%A9"


def test_passfile_escapes_backslash_and_colon() -> None:
    assert passfile_text("db:1", 5432, "u\\x", "p:w\\d") == "db\\:1:5432:*:u\\\\x:p\\:w\\\\d\n"


def test_remote_command_quotes_every_word() -> None:
    import shlex

    cmd = remote_command(["pg_dump", "--dbname=host='h' dbname='it''s $(x)'", "a b"])
    words = shlex.split(cmd)
    assert words[:2] == ["sh", "-c"] and words[3] == "backupd-pg"
    assert words[4:] == ["pg_dump", "--dbname=host='h' dbname='it''s $(x)'", "a b"]
    script = words[2]
    assert "umask 077" in script and "mktemp" in script and "trap 'rm -f \"$f\"' EXIT" in script
    assert 'PGPASSFILE="$f" "$@"' in script and "PGPASSWORD" not in script.replace("unset PGPASSWORD", "")
    # the script really works: stdin becomes a 0600 passfile that is gone afterwards
    probe = remote_command(["sh", "-c", 'stat -c %a "$PGPASSFILE"; cat "$PGPASSFILE"; echo "$PGPASSFILE"'])
    done = subprocess.run(["sh", "-c", probe], input="h:1:*:u:secret\n", capture_output=True, text=True, check=True)
    mode, content, path = done.stdout.splitlines()
    assert mode == "600" and content == "h:1:*:u:secret" and not Path(path).exists()
    failed = subprocess.run(["sh", "-c", remote_command(["sh", "-c", "exit 3"])], input="", capture_output=True)
    assert failed.returncode == 3


GLOBALS = r"""--
-- PostgreSQL database cluster dump
--

\restrict k3y

SET default_transaction_read_only = off;
CREATE ROLE app_owner;
ALTER ROLE app_owner WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$a;b''c';
CREATE ROLE "Odd ""x"" role";
COMMENT ON ROLE "Odd ""x"" role" IS 'multi
-- line; comment';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
ALTER ROLE postgres SET work_mem TO '1GB';
GRANT app_owner TO "Odd ""x"" role" GRANTED BY postgres;
GRANT "Odd ""x"" role" TO postgres GRANTED BY postgres;
CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';

\unrestrict k3y

--
-- PostgreSQL database cluster dump complete
--
"""


def test_globals_only_touch_roles_the_target_lacks() -> None:
    from backupd.formats.pgglobals import PgGlobalsChecker
    from backupd.sources.postgresql.globals import plan_globals
    from tests.conftest import feed_in_chunks

    result = feed_in_chunks(PgGlobalsChecker(), GLOBALS.encode(), 7)
    assert result.ok, result.errors
    assert result.stats["roles"] == ['Odd "x" role', "app_owner", "postgres"] and result.facts["role_passwords"]
    plan = plan_globals(GLOBALS, {"postgres", "app_owner"})
    assert plan.created == ['Odd "x" role'] and plan.kept == ["app_owner", "postgres"]
    assert plan.statements == [
        "SET default_transaction_read_only = off",
        'CREATE ROLE "Odd ""x"" role"',
        'COMMENT ON ROLE "Odd ""x"" role" IS \'multi\n-- line; comment\'',
        'GRANT app_owner TO "Odd ""x"" role"',
    ], "nothing that alters postgres or app_owner, no GRANTED BY, no tablespace"
    assert plan.skipped == ["CREATE TABLESPACE fast OWNER"]
    assert plan_globals(GLOBALS, {"postgres", "app_owner", 'Odd "x" role'}).statements == []
    cut = feed_in_chunks(PgGlobalsChecker(), GLOBALS.encode()[: GLOBALS.index("\\unrestrict")])
    assert not cut.ok and "truncated" in cut.errors[0]


def test_database_settings_render_as_pg_dump_would() -> None:
    from backupd.sources.postgresql.restore import props_sql, setting_sql, split_guc_list

    assert split_guc_list('"$user", public, "We""ird"') == ["$user", "public", 'We"ird']
    assert setting_sql('ALTER DATABASE "d"', 'search_path="$user", app') == (
        "ALTER DATABASE \"d\" SET \"search_path\" TO '$user', 'app'"
    )
    assert (
        setting_sql('ALTER DATABASE "d"', "myapp.mode=it's") == 'ALTER DATABASE "d" SET "myapp"."mode" TO \'it\'\'s\''
    )
    sql, notes = props_sql(
        "new db",
        {"owner": "app", "acl": [{"grantee": "", "privilege": "CONNECT", "grantable": False},
                                 {"grantee": "gone", "privilege": "CREATE", "grantable": True}],
         "settings": ["work_mem=8MB"], "role_settings": {"app": ["statement_timeout=5min"]}},
        {"app"},
    )  # fmt: skip
    assert sql == [
        'ALTER DATABASE "new db" OWNER TO "app"',
        'ALTER DATABASE "new db" SET "work_mem" TO \'8MB\'',
        'ALTER ROLE "app" IN DATABASE "new db" SET "statement_timeout" TO \'5min\'',
        'REVOKE ALL ON DATABASE "new db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "new db" FROM "app"',
        'GRANT CONNECT ON DATABASE "new db" TO PUBLIC',
    ]
    assert notes == ["grant to gone: no such role here"]


def test_pg_dump_of_the_servers_major_or_one_line() -> None:
    from backupd.errors import StepError
    from backupd.sources.postgresql.client import Runner, dump_tool

    class Fake(Runner):
        label = "db1:5432"

        def __init__(self, on_path_major: str | None) -> None:
            self.on_path_major = on_path_major

        def capture(self, argv: Any, timeout: float = 300) -> tuple[int, str, str]:
            return 0, f"pg_dump (PostgreSQL) {self.on_path_major}.2\n", ""

        def stream(self, argv: Any, writer: Any) -> Any:
            raise AssertionError

        def bindirs(self) -> list[str]:
            return ["/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/9.6/bin"]

        def which(self, tool: str) -> str | None:
            return "/usr/bin/pg_dump" if self.on_path_major else None

    assert dump_tool(Fake(None), "pg_dump", "9.6") == "/usr/lib/postgresql/9.6/bin/pg_dump"
    assert dump_tool(Fake("17"), "pg_dump", "17") == "/usr/bin/pg_dump"
    with pytest.raises(StepError) as err:
        dump_tool(Fake("16"), "pg_dump", "15")
    assert str(err.value) == (
        "host db1:5432, step dump: pg_dump for PostgreSQL 15 not found (install postgresql-client-15)"
    )


# ------------------------------------------------------------------ backup, restore, drill


def test_backup_is_verified_and_listed(source: Source, shared: Path) -> None:
    cfg = shared
    rows = json.loads(backupd(cfg, "list", "pg", "--json").stdout)
    assert len(rows) == 1 and rows[0]["verified"]
    bdir = Path(rows[0]["path"])
    manifest = json.loads((bdir / "manifest.json").read_text())
    arts = {a["name"]: a for a in manifest["artifacts"]}
    db_art = arts[artifact_name(source.database)]
    assert set(arts) == {"globals", "db-postgres", artifact_name(source.database)}
    assert db_art["format"] == "pg-custom" and db_art["database"] == source.database
    assert db_art["file"] == "db-shop%20data%2Ev1.pgdump.zst"
    assert db_art["stats"]["tables"] == row_counts(source.pg, source.database)
    assert db_art["stats"]["large_objects"] == 1
    assert db_art["stats"]["sequence_values"]["app.counter"] == 42
    assert "app_owner" in arts["globals"]["stats"]["roles"]
    assert not arts["globals"]["facts"]["role_passwords"]
    facts = next(d for d in manifest["source"]["databases"] if d["database"] == source.database)
    assert facts["database"] == source.database and facts["owner"] == "app_owner"
    assert "work_mem=8MB" in facts["settings"]
    for f in bdir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    out = backupd(cfg, "verify", "pg")
    assert out.returncode == 0, out.stdout + out.stderr
    out = backupd(cfg, "inspect", str(bdir / db_art["file"]))
    assert out.returncode == 0 and "pg-custom" in out.stdout and "app.docs" in out.stdout
    out = backupd(cfg, "inspect", str(bdir / arts["globals"]["file"]))
    assert out.returncode == 0 and "pg-globals" in out.stdout and "app_owner" in out.stdout


def test_restore_into_second_server_under_another_name(
    source: Source, shared: Path, target: tuple[Postgres, dict[str, str]]
) -> None:
    pg, env = target
    # a role the target already has is never altered by the backup's globals
    pg.execute("DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_owner') THEN "
               "ALTER ROLE app_owner NOLOGIN CONNECTION LIMIT 7; ELSE "
               "CREATE ROLE app_owner NOLOGIN CONNECTION LIMIT 7; END IF; END $$")  # fmt: skip
    out = backupd(shared, "restore", "pg", "--to", pg.uri("copy of shop"), "--database", source.database, env=env)
    assert out.returncode == 0, out.stderr
    assert pg.execute("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = 'app_owner'") == [("f", "7")]
    assert pg.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'reader'") == [("f",)], "created from globals"
    assert db_acl(pg, "copy of shop") == db_acl(source.pg, source.database)
    assert role_settings(pg, "copy of shop") == [("reader", "statement_timeout=5min")]
    assert "restored pg/" in out.stdout and "rows" in out.stdout
    assert row_counts(pg, "copy of shop") == row_counts(source.pg, source.database)
    owner, settings = db_setting(pg, "copy of shop")
    assert owner == "app_owner"
    assert sorted(settings) == sorted(db_setting(source.pg, source.database)[1])
    same = "SELECT md5(string_agg(payload::text, ',' ORDER BY id)) FROM app.blobs"
    assert pg.execute(same, "copy of shop") == source.pg.execute(same, source.database)
    docs = (
        "SELECT md5(string_agg(body::text || coalesce(note, 'N'), ',' ORDER BY id))"
        " FROM app.docs LEFT JOIN app.notes USING (id)"
    )
    assert pg.execute(docs, "copy of shop") == source.pg.execute(docs, source.database)
    assert pg.execute("SELECT app.add(2, 3), last_value FROM app.counter", "copy of shop") == [("5", "42")]
    assert pg.execute("SELECT count(*) FROM pg_largeobject_metadata", "copy of shop") == [("1",)]
    tables = pg.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'app' GROUP BY 1", "copy of shop")
    assert tables == [("app_owner",)], "owners are kept"
    assert pg.password not in out.stdout + out.stderr


def test_plain_format_backs_up_and_restores(source: Source, target: tuple[Postgres, dict[str, str]]) -> None:
    cfg = source.backed_up("plain", format="plain")
    manifest = json.loads((newest(cfg) / "manifest.json").read_text())
    db_art = next(a for a in manifest["artifacts"] if a["format"] == "pg-plain")
    assert db_art["file"].endswith(".sql.zst")
    assert db_art["stats"]["tables"] == row_counts(source.pg, source.database)
    pg, env = target
    out = backupd(cfg, "restore", "pg", "--to", pg.uri("plain_copy"), env=env)
    assert out.returncode == 0, out.stderr
    assert row_counts(pg, "plain_copy") == row_counts(source.pg, source.database)
    assert db_setting(pg, "plain_copy")[0] == "app_owner"


def test_drill_into_scratch_server_passes(source: Source, shared: Path) -> None:
    out = backupd(shared, "drill", "pg", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)[0]
    assert report["outcome"] == "ok"
    checks = {c["check"]: c for c in report["checks"]}
    label = f"postgresql {source.database}"
    for name in ("tables", "views", "materialized_views", "functions", "sequences", "triggers", "large objects",
                 "database settings", "database owner", "database acl", "sequence app.counter",
                 "rows public.big"):  # fmt: skip
        assert f"{label} {name}" in checks, name
    assert checks[f"{label} rows public.big"]["actual"] == 20000
    assert "app.add(integer, integer)" in checks[f"{label} functions"]["actual"]
    assert checks[f"{label} views"]["actual"] == ["app.note_view"]


def test_drill_into_configured_target_drops_its_databases(
    source: Source, shared: Path, target: tuple[Postgres, dict[str, str]], tmp_path: Path
) -> None:
    pg, _ = target
    pw = write_secret(tmp_path / "drill.password", pg.password)
    cfg = shares_store(source, "drill-target", shared, drill={"target": pg.uri(user="postgres")})
    before = {r[0] for r in pg.execute("SELECT datname FROM pg_database")}
    out = backupd(cfg, "drill", "pg", env={"BACKUPD_DRILL_PASSWORD_FILE": str(pw)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert {r[0] for r in pg.execute("SELECT datname FROM pg_database")} == before


def test_via_ssh_dumps_on_the_ssh_host(source: Source, sshd: SSHD) -> None:
    """pg_dump runs on the SSH host (here the lab sshd on this machine); the passfile goes over the channel's
    stdin into a 0600 temp file there, which is gone afterwards."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(tmp.glob("backupd-pgpass.*"))
    cfg = source.backed_up("ssh", via_ssh=True, ssh=sshd.ssh_config())
    manifest = json.loads((newest(cfg) / "manifest.json").read_text())
    assert "via ssh" in manifest["source"]["host"]
    db_art = next(a for a in manifest["artifacts"] if a["format"] == "pg-custom")
    assert db_art["stats"]["tables"] == row_counts(source.pg, source.database)
    assert set(tmp.glob("backupd-pgpass.*")) == before
    out = backupd(cfg, "check-config", "--connect")
    assert out.returncode == 0 and "ssh" in out.stdout, out.stderr


# ------------------------------------------------------------------ bad input and faults


def test_wrong_password_is_one_line(source: Source, tmp_path: Path) -> None:
    bad = write_secret(tmp_path / "wrong", "not-the-password")
    cfg = source.config("wrongpw", password_file=str(bad))
    out = backupd(cfg, "run", "pg")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert f"{source.pg.host}:{source.pg.port}" in line and "step connect" in line
    assert "password authentication failed" in line and "not-the-password" not in out.stdout + out.stderr


def test_unreachable_server_is_one_line(source: Source) -> None:
    from backupd.scratch.base import free_port

    port = free_port()
    cfg = source.config("unreach", port=port)
    out = backupd(cfg, "run", "pg")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert f"127.0.0.1:{port}" in line and "step connect" in line and "refused" in line


def test_database_that_does_not_exist(source: Source) -> None:
    cfg = source.config("nodb", databases=[source.database, "no such db"])
    out = backupd(cfg, "run", "pg")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert "no such db" in line and "does not exist" in line
    assert json.loads(backupd(cfg, "list", "pg", "--json").stdout) == []


def test_check_config_connect(source: Source, tmp_path: Path) -> None:
    out = backupd(source.config("reach"), "check-config", "--connect")
    assert out.returncode == 0, out.stderr
    assert "PostgreSQL" in out.stdout or "postgresql" in out.stdout
    source.pg.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plain_user') THEN "
                      "CREATE ROLE plain_user LOGIN PASSWORD 'pu'; END IF; END $$")  # fmt: skip
    source.pg.execute(f'GRANT CONNECT ON DATABASE "{source.database}" TO plain_user')
    pw = write_secret(tmp_path / "pu", "pu")
    cfg = source.config("reach-su", user="plain_user", password_file=str(pw), include_role_passwords=True)
    out = backupd(cfg, "check-config", "--connect")
    assert out.returncode == 1
    assert "superuser" in out.stderr and "plain_user" in out.stderr


def _children(pid: int, name: str) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == name:
            found.append(int(stat_file.parent.name))
    return found


def _written(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_pg_dump_killed_by_pid_half_way_fails_the_run(source: Source) -> None:
    """The real pg_dump child of `backupd run`, stopped once it has written 2 MB of a ~20 MB dump and then
    SIGKILLed (as the OOM killer would): the run fails naming the signal, and nothing is committed."""
    source.pg.execute("CREATE DATABASE bulk")
    source.pg.execute(
        "CREATE TABLE filler AS SELECT i, md5(i::text) || md5((i + 1)::text) AS t FROM generate_series(1, 250000) i",
        "bulk",
    )
    cfg = source.config("killed", databases=["bulk"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupd", "--config", str(cfg), "run", "pg"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        victim = None
        while victim is None and proc.poll() is None:
            pids = _children(proc.pid, "pg_dump")
            if pids and _written(pids[0]) > 2 << 20:
                victim = pids[0]
                os.kill(victim, signal.SIGSTOP)
                os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    source.pg.execute("DROP DATABASE bulk")
    assert victim is not None, "the dump ended before it could be killed"
    assert proc.returncode == 1
    line = one_line(err)
    assert "killed by SIGKILL" in line and "database bulk" in line and "step dump" in line
    assert json.loads(backupd(cfg, "list", "pg", "--json").stdout) == []
    assert not list((cfg.parent / "store").rglob("*.pgdump.zst"))


def _altered(path: Path, how: Callable[[bytes], bytes]) -> bytes:
    original = path.read_bytes()
    raw = zstandard.ZstdDecompressor().decompress(original, max_output_size=1 << 30)
    path.write_bytes(zstandard.ZstdCompressor().compress(how(raw)))
    return original


def test_flipped_byte_fails_verify_and_drill(source: Source) -> None:
    cfg = source.backed_up("flipped")
    art = next(newest(cfg).glob("db-*.pgdump.zst"))
    original = art.read_bytes()
    data = bytearray(original)
    data[len(data) // 3] ^= 0x01
    art.write_bytes(bytes(data))
    try:
        out = backupd(cfg, "drill", "pg")
        assert out.returncode == 1 and "sha256" in out.stderr and "Traceback" not in out.stderr
        out = backupd(cfg, "verify", "pg")
        assert out.returncode == 1 and "sha256" in out.stdout + out.stderr
    finally:
        art.write_bytes(original)


def test_truncated_archive_is_caught_by_the_format_check(source: Source) -> None:
    """Re-hashed to match, so only the pg-custom check can tell the archive is cut short."""
    cfg = source.backed_up("truncated")
    bdir = newest(cfg)
    art = next(bdir.glob("db-*.pgdump.zst"))
    _altered(art, lambda raw: raw[: len(raw) * 2 // 3])
    manifest_path = bdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    import hashlib

    for a in manifest["artifacts"]:
        if a["file"] == art.name:
            a["sha256"] = hashlib.sha256(art.read_bytes()).hexdigest()
            a["bytes"] = art.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    out = backupd(cfg, "drill", "pg")
    assert out.returncode == 1 and "truncated" in out.stderr, out.stderr
    out = backupd(cfg, "verify", "pg")
    assert out.returncode == 1
    assert "truncated" in out.stdout + out.stderr


def test_restore_into_non_empty_database_needs_yes(
    source: Source, shared: Path, target: tuple[Postgres, dict[str, str]]
) -> None:
    pg, env = target

    def restore(*args: str) -> subprocess.CompletedProcess[str]:
        return backupd(shared, "restore", "pg", "--to", pg.uri("busy"), "--database", source.database, *args, env=env)

    pg.execute("CREATE DATABASE busy")
    pg.execute("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)", "busy")
    out = restore()
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert "busy" in line and str(pg.port) in line and "--yes" in line and "not empty" in line
    assert pg.execute("SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                      "busy") == [("keep",)]  # fmt: skip
    out = restore("--yes")
    assert out.returncode == 0, out.stderr
    assert row_counts(pg, "busy") == row_counts(source.pg, source.database)
    # twice over itself: --clean --if-exists drops what the dump holds first
    out = restore("--yes")
    assert out.returncode == 0, out.stderr
    assert row_counts(pg, "busy") == row_counts(source.pg, source.database)


def test_bad_restore_requests_are_usage_errors(
    source: Source, shared: Path, target: tuple[Postgres, dict[str, str]]
) -> None:
    cfg = shared
    pg, env = target
    out = backupd(cfg, "restore", "pg", "--to", "postgresql://postgres:secret@127.0.0.1:1/x")
    assert out.returncode == 2 and "password" in out.stderr and "secret" not in out.stderr
    out = backupd(cfg, "restore", "pg", "--to", "mysql://root@127.0.0.1/x")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    out = backupd(cfg, "restore", "pg", "--to", pg.uri("one"), env=env)
    assert out.returncode == 2 and "--database" in out.stderr
    out = backupd(cfg, "restore", "pg", "--to", pg.uri("one"), "--database", "nope", env=env)
    assert out.returncode == 2 and "nope" in out.stderr
    assert "one" not in {r[0] for r in pg.execute("SELECT datname FROM pg_database")}
