"""Sandbox content for `backupd demo` and the integration tests: a WordPress-like database and site tree,
and a config directory pointing backupd at scratch servers."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backupd.scratch.mariadb import MariaDB

DUMP_GRANTS = "SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, PROCESS"  # what a consistent dump needs

WORDPRESS_SCHEMA = """
CREATE TABLE wp_users (
  ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_login varchar(60) NOT NULL, user_email varchar(100) NOT NULL,
  user_registered datetime NOT NULL DEFAULT '2000-01-01 00:00:00', display_name varchar(250) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE wp_posts (
  ID bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_author bigint unsigned NOT NULL DEFAULT 0, post_date datetime NOT NULL,
  post_title text NOT NULL, post_content longtext NOT NULL, post_status varchar(20) NOT NULL DEFAULT 'publish',
  KEY post_author (post_author)
) ENGINE=InnoDB;
CREATE TABLE wp_postmeta (
  meta_id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  post_id bigint unsigned NOT NULL DEFAULT 0, meta_key varchar(255), meta_value longtext, KEY post_id (post_id)
) ENGINE=InnoDB;
CREATE TABLE wp_options (
  option_id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
  option_name varchar(191) NOT NULL UNIQUE, option_value longtext NOT NULL, autoload varchar(20) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE wp_audit (
  id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, user_id bigint unsigned, action varchar(40),
  at datetime
) ENGINE=InnoDB;
CREATE TABLE wp_blobs (id int PRIMARY KEY, data blob) ENGINE=InnoDB;
CREATE TABLE wp_empty (id int PRIMARY KEY) ENGINE=InnoDB;
CREATE TRIGGER wp_users_audit AFTER INSERT ON wp_users FOR EACH ROW
  INSERT INTO wp_audit (user_id, action, at) VALUES (NEW.ID, 'created', NOW());
CREATE PROCEDURE wp_count_posts(IN st varchar(20)) SELECT COUNT(*) FROM wp_posts WHERE post_status = st;
CREATE VIEW wp_published AS SELECT ID, post_title FROM wp_posts WHERE post_status = 'publish';
CREATE EVENT wp_cleanup ON SCHEDULE EVERY 1 DAY DO DELETE FROM wp_audit WHERE at < NOW() - INTERVAL 90 DAY;
"""

_WORDS = [
    "backup",
    "restore",
    "it's",
    "don't",
    "café",
    "naïve",
    "path\\to",
    'say "hi"',
    "a),(b",
    "line\nbreak",
    "tab\there",
    "100%",
    "O'Brien",
    "<b>bold</b>",
    "emoji 🎉",
    "semi;colon",
    "--comment",
    "/* c */",
]


def _q(value: str) -> str:
    return (
        "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t") + "'"
    )


def wordpress_data_sql(posts: int = 200, seed: int = 7) -> str:
    """Rows with the awkward content real sites have: quotes, backslashes, '),(' and newlines in text."""
    rnd = random.Random(seed)
    out = ["SET NAMES utf8mb4;"]
    users = [
        f"({i}, {_q(f'user{i}')}, {_q(f'user{i}@example.net')}, '2024-01-0{1 + i % 9} 10:00:00', "
        f"{_q(rnd.choice(_WORDS))})"
        for i in range(1, 6)
    ]
    out.append(
        "INSERT INTO wp_users (ID, user_login, user_email, user_registered, display_name) VALUES "
        + ",".join(users)
        + ";"
    )
    for start in range(0, posts, 50):
        rows = []
        for i in range(start + 1, min(posts, start + 50) + 1):
            content = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(5, 60)))
            rows.append(
                f"({i}, {1 + i % 5}, '2025-0{1 + i % 9}-1{i % 10} 12:00:00', {_q(f'Post {i}: ' + rnd.choice(_WORDS))}, "
                f"{_q(content)}, {_q('publish' if i % 4 else 'draft')})"
            )
        out.append(
            "INSERT INTO wp_posts (ID, post_author, post_date, post_title, post_content, post_status) VALUES "
            + ",".join(rows)
            + ";"
        )
        meta = [
            f"({i}, {_q('_edit_lock')}, {_q(str(rnd.randint(1, 10**9)))})"
            for i in range(start + 1, start + 51)
            if i <= posts
        ]
        out.append("INSERT INTO wp_postmeta (post_id, meta_key, meta_value) VALUES " + ",".join(meta) + ";")
    opts = [f"({_q(f'option_{i}')}, {_q(rnd.choice(_WORDS))}, 'yes')" for i in range(40)]
    out.append("INSERT INTO wp_options (option_name, option_value, autoload) VALUES " + ",".join(opts) + ";")
    blobs = [f"({i}, X'{os.urandom(64).hex()}')" for i in range(10)]
    out.append("INSERT INTO wp_blobs (id, data) VALUES " + ",".join(blobs) + ";")
    return "\n".join(out) + "\n"


def seed_wordpress(
    db: MariaDB, database: str, *, posts: int, user: str, password: str, grants: str = DUMP_GRANTS
) -> None:
    """A WordPress-shaped database with data, and a backup user holding the grants a dump needs."""
    db.execute(f"CREATE DATABASE {database}")
    db.execute(WORDPRESS_SCHEMA, database=database)
    db.execute(wordpress_data_sql(posts=posts), database=database)
    db.create_user(user, password, grants=grants)


def make_site(root: Path, uploads: int = 20, seed: int = 7) -> Path:
    """A WordPress-like tree: wp-config.php, themes, uploads with binary files, a symlink, an empty dir."""
    rnd = random.Random(seed)
    (root / "wp-content" / "uploads" / "2025" / "11").mkdir(parents=True, exist_ok=True)
    (root / "wp-content" / "themes" / "twentytwentyfive").mkdir(parents=True, exist_ok=True)
    (root / "wp-content" / "cache").mkdir(parents=True, exist_ok=True)
    (root / "wp-content" / "upgrade").mkdir(parents=True, exist_ok=True)
    (root / "wp-config.php").write_text("<?php\ndefine('DB_NAME', 'wordpress');\ndefine('DB_USER', 'wp');\n")
    (root / "index.php").write_text("<?php require __DIR__ . '/wp-blog-header.php';\n")
    (root / "wp-content" / "themes" / "twentytwentyfive" / "style.css").write_text("body { color: #222; }\n")
    (root / "wp-content" / "cache" / "page.html").write_text("cached page: excluded from backups\n")
    for i in range(uploads):
        size = rnd.randint(100, 200_000)
        (root / "wp-content" / "uploads" / "2025" / "11" / f"image-{i:03d}.jpg").write_bytes(
            rnd.randbytes(size)
        )
    link = root / "wp-content" / "uploads" / "latest.jpg"
    if not link.is_symlink():
        link.symlink_to("2025/11/image-000.jpg")
    return root


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    s = str(value)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_text(data: Mapping[str, Any]) -> str:
    """A tiny TOML writer for our own flat-ish configs (tables one level deep, plus nested tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        lines.append("")
        lines.append(f"[{prefix}]")
        nested = []
        for k, v in table.items():
            if isinstance(v, Mapping):
                nested.append((f"{prefix}.{k}", v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for p, t in nested:
            emit(p, t)

    for key, table in tables:
        emit(key, table)
    return "\n".join(lines).lstrip() + "\n"


def write_secret(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return path


def write_config(
    base: Path,
    jobs: Mapping[str, Mapping[str, Any]],
    *,
    settings: Mapping[str, Any] | None = None,
    retention: Mapping[str, Any] | None = None,
) -> Path:
    """Lay out backupd.toml, jobs/*.toml and retention.toml under `base`; returns backupd.toml's path."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "jobs").mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "storage": {"root": str(base / "store")},
        "state": {"dir": str(base / "state")},
        "logging": {"format": "json"},
    }
    for key, value in (settings or {}).items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = base / "backupd.toml"
    path.write_text(toml_text(cfg))
    for name, job in jobs.items():
        (base / "jobs" / f"{name}.toml").write_text(toml_text(job))
    if retention is not None:
        (base / "retention.toml").write_text(toml_text(retention))
    return path
