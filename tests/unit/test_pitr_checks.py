"""The PITR server rules on what a server says about itself, and the [pitr] table of MySQL and WordPress
jobs reaching the stream through the source interface (no server needed for either)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.actions.stream import pitr_jobs
from backupd.config import load_config
from backupd.errors import StepError
from backupd.lab.content import write_config, write_secret
from backupd.sources.mysql.stream.checks import check_facts, expiry_seconds, global_privileges
from backupd.sources.mysql.stream.replication import ServerFacts

GOOD = {"log_bin": "ON", "binlog_format": "ROW", "binlog_checksum": "CRC32", "binlog_expire_logs_seconds": "0",
        "expire_logs_days": "0.000000"}
GRANTS = ["GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `s`@`%` IDENTIFIED BY PASSWORD '*X'"]


def facts(version: str = "10.11.6-MariaDB-log", **over: str) -> ServerFacts:
    return ServerFacts(version, "mariadb" in version.lower(), {**GOOD, **over})


def refusal(f: ServerFacts, grants: list[str] = GRANTS) -> str:
    with pytest.raises(StepError) as exc:
        check_facts(f, lambda: grants, "db:3306")
    return str(exc.value)


def test_a_good_server_passes_with_its_details() -> None:
    lines = check_facts(facts(), lambda: GRANTS, "db:3306")
    assert lines[0] == "pitr db:3306: MariaDB 10.11.6, ROW binlog, CRC32"
    assert "never expires" in lines[1]


def test_each_rule_is_one_clear_line() -> None:
    mysql = "host db:3306, step pitr check: server 8.0.36 is MySQL: pitr supports MariaDB only for now"
    assert refusal(facts("8.0.36")) == mysql
    assert "log_bin is OFF" in refusal(facts(log_bin="OFF"))
    assert "binlog_format is MIXED, pitr needs ROW" in refusal(facts(binlog_format="MIXED"))
    assert "binlog_checksum is NONE" in refusal(facts(binlog_checksum="NONE"))
    assert "log_bin_compress is ON" in refusal(facts(log_bin_compress="ON"))  # compressed events hide DDL
    assert check_facts(facts(log_bin_compress="OFF"), lambda: GRANTS, "db:3306")
    assert "lacks BINLOG MONITOR ON *.*" in refusal(facts(), ["GRANT REPLICATION SLAVE ON *.* TO `s`@`%`"])
    on_one_db = ["GRANT REPLICATION SLAVE, BINLOG MONITOR ON `shop`.* TO `s`@`%`"]  # not global: no use
    assert "lacks REPLICATION SLAVE and BINLOG MONITOR" in refusal(facts(), on_one_db)
    assert check_facts(facts(), lambda: ["GRANT ALL PRIVILEGES ON *.* TO `root`@`%`"], "db:3306")


def test_expiry_warns_under_a_day() -> None:
    assert expiry_seconds(facts(binlog_expire_logs_seconds="3600")) == 3600
    assert expiry_seconds(facts(expire_logs_days="2.000000")) == 2 * 86400
    short = check_facts(facts(binlog_expire_logs_seconds="3600"), lambda: GRANTS, "db:3306")
    assert short[1].startswith("warning: pitr db:3306: the server expires its binlog after 60m")
    week = check_facts(facts(expire_logs_days="7"), lambda: GRANTS, "db:3306")
    assert not week[1].startswith("warning")
    assert global_privileges(["GRANT REPLICATION CLIENT ON *.* TO x"]) == {"REPLICATION CLIENT"}


def test_mysql_and_wordpress_jobs_stream_through_the_source(tmp_path: Path) -> None:
    pw = write_secret(tmp_path / "pw", "x")
    pitr = {"enabled": True, "segment": "1m", "server_id": 4001}
    mysql = {"type": "mysql", "schedule": "@daily", "host": "db", "user": "u", "password_file": str(pw),
             "pitr": pitr}
    ssh = {"host": "web", "user": "backup"}
    wp = {"type": "wordpress", "schedule": "@daily", "ssh": ssh, "files": {"source": "/var/www"},
          "mysql": {"host": "127.0.0.1", "user": "u", "password_file": str(pw), "databases": ["wp"],
                    "via_ssh": True, "pitr": pitr}}
    plain = {"type": "mysql", "schedule": "@daily", "host": "db", "user": "u"}
    cfg = load_config(write_config(tmp_path, {"shop": mysql, "blog": wp, "plain": plain}))
    assert pitr_jobs(cfg) == ["blog", "shop"]
    with pytest.raises(Exception, match="server_id"):
        load_config(write_config(tmp_path / "bad", {"shop": {**mysql, "pitr": {"enabled": True}}}))
