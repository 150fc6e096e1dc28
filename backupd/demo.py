"""`backupd demo`: the whole cycle against local sandbox servers, for a first look and a smoke test.

It starts throwaway servers (MariaDB, OpenSSH; more as sources land), fills them with sample data, writes a
config pointing at them, runs every job through the real CLI code path, verifies the results and prints them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupd.errors import EXIT_FAILED, EXIT_OK


@dataclass
class DemoEnv:
    """Everything the demo stages share: the demo directory, the running servers, the jobs to configure."""

    base: Path
    stack: ExitStack
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def stage_wordpress(env: DemoEnv) -> None:
    from backupd.sandbox import WORDPRESS_SCHEMA, make_site, wordpress_data_sql, write_secret
    from backupd.scratch import SSHD, MariaDB

    say("starting a sandbox MariaDB and OpenSSH server")
    db = env.stack.enter_context(MariaDB(env.base / "servers" / "mariadb"))
    sshd = env.stack.enter_context(SSHD(env.base / "servers" / "sshd"))
    env.servers.update(mariadb=db, sshd=sshd)
    print(f"   mariadb on 127.0.0.1:{db.port}, sshd on 127.0.0.1:{sshd.port}")
    db.execute("CREATE DATABASE wordpress")
    db.execute(WORDPRESS_SCHEMA.replace(";\n", ";\n"), database="wordpress")
    db.execute(wordpress_data_sql(posts=500), database="wordpress")
    db.create_user(
        "backup",
        "demo-secret-" + db.root_password[:8],
        grants="SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, PROCESS, RELOAD",
        on="*.*",
    )
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


STAGES: list[Callable[[DemoEnv], None]] = [stage_wordpress]


def run_demo(directory: Path | None = None, keep: bool = False) -> int:
    from backupd.cli import main as cli_main
    from backupd.sandbox import write_config

    base = directory or Path(tempfile.mkdtemp(prefix="backupd-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    ok = True
    with ExitStack() as stack:
        env = DemoEnv(base=base, stack=stack)
        try:
            for stage in STAGES:
                stage(env)
        except Exception as exc:  # a sandbox server that cannot start: one line, not a traceback
            print(
                f"backupd: demo: setting up the sandbox failed: {str(exc).splitlines()[0][:300]}",
                file=sys.stderr,
            )
            return EXIT_FAILED
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
        ok &= cli_main(["--config", cfg, "check-config"]) == EXIT_OK
        for name in env.jobs:
            say(f"backupd run {name}")
            ok &= cli_main(["--config", cfg, "run", name]) == EXIT_OK
        say("backupd list")
        cli_main(["--config", cfg, "list"])
        say("backupd verify")
        ok &= cli_main(["--config", cfg, "verify"]) == EXIT_OK
        for hook in AFTER_RUN:
            ok &= hook(env, cfg)
        say("result")
        print(f"   demo {'succeeded' if ok else 'FAILED'}; config, store and state under {base}")
    if not keep and directory is None:
        shutil.rmtree(base, ignore_errors=True)
        print(f"   (removed {base}; use --keep or --dir to keep it)")
    sys.stdout.flush()
    return EXIT_OK if ok else EXIT_FAILED


# Later stages (retention, S3, drills, daemon) append a callable(env, config_path) -> bool here.
AFTER_RUN: list[Callable[[DemoEnv, str], bool]] = []
