"""A WordPress job restored to a point: its database rolled forward from the base over SSH, its files from
the base backup, and the summary says so."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backupd.lab.content import make_site, seed_wordpress, write_config, write_secret
from backupd.lab.sshd import SSHD
from backupd.store.segments import SegmentStore
from tests.conftest import run_cli
from tests.pitr.conftest import World, second
from tests.pitr.server_segments import commit_closed_binlogs


def test_wordpress_until(pitr_world: World, sshd: SSHD, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    w = pitr_world
    seed_wordpress(w.source, "wp", posts=20, user="wpbackup", password="wp-pw")
    job = {
        "type": "wordpress", "schedule": "@daily",
        "mysql": {"host": w.source.host, "port": w.source.port, "user": "wpbackup", "databases": ["wp"],
                  "password_file": str(write_secret(tmp_path / "wp.pw", "wp-pw")), "via_ssh": True,
                  "pitr": {"enabled": True, "server_id": 4002}},
        "files": {"source": str(make_site(tmp_path / "www", uploads=3))},
        "ssh": sshd.ssh_config(),
    }
    cfg = write_config(tmp_path / "etc", {"wordpress": job})
    assert run_cli(capsys, "--config", str(cfg), "run", "wordpress")[0] == 0
    time.sleep(1.1)
    w.source.execute("INSERT INTO wp_options (option_name, option_value, autoload) VALUES ('pitr', 'kept', 'yes')",
                     database="wp")
    time.sleep(1.1)
    until = int(time.time())
    time.sleep(1.1)
    w.source.execute("DELETE FROM wp_options WHERE option_name = 'pitr'", database="wp")  # the mistake
    commit_closed_binlogs(w.source, SegmentStore(tmp_path / "etc" / "store", "wordpress"), "wordpress")
    rc, out, err = run_cli(capsys, "--config", str(cfg), "restore", "wordpress", "--until", second(until),
                           "--to", w.to("wp_restored"), "--files-to", str(tmp_path / "files"),
                           "--password-file", str(w.password_file))
    assert rc == 0, err
    got = w.target.execute("SELECT option_value FROM wp_options WHERE option_name = 'pitr'", database="wp_restored")
    assert got == [("kept",)]
    assert "files as of base backup" in out and "not rolled forward" in out
    assert (tmp_path / "files" / "wp-config.php").is_file()
