"""An encrypted PITR job end to end: the stream commits age-encrypted segments (no plaintext binlog on disk),
`restore --until` with the identity lands on the exact rows of the chosen second, and without the identity
it refuses in one line before the target is touched."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from backupd.lab.content import write_config, write_secret
from backupd.scratch.mariadb import MariaDB
from backupd.store.segments import SegmentStore
from tests.conftest import run_cli
from tests.pitr.conftest import JOB, LOG_BIN, Segments, World, _workload, rows, second

pytestmark = pytest.mark.skipif(shutil.which("age-keygen") is None, reason="age is not installed")
MARKER = "PITR-PLAINTEXT-MARKER-51c2"


def keygen(path: Path) -> str:
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return out.stderr.strip().split(": ", 1)[1]


def test_encrypted_segments_restore_to_a_second_with_the_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backupd.cli import main

    key = tmp_path / "id.key"
    recipient = keygen(key)
    with MariaDB(base_dir=tmp_path / "src", extra_args=LOG_BIN) as source, MariaDB(
        base_dir=tmp_path / "dst"
    ) as target:
        source.execute(
            "CREATE DATABASE shop; CREATE TABLE shop.items"
            " (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, qty INT, price DECIMAL(10,2));"
            f"INSERT INTO shop.items VALUES (1, '{MARKER}', 1, 1.25), (2, 'two', 2, 2.25), (3, 'three', 3, 3.25);"
        )
        pw = write_secret(tmp_path / "root.pw", source.root_password)
        job = {
            "type": "mysql", "schedule": "@daily", "host": source.host, "port": source.port, "user": "root",
            "password_file": str(pw), "databases": ["shop"],
            "pitr": {"enabled": True, "server_id": 4002, "window": "1h", "segment": "1s"},
        }
        base = tmp_path / "world"
        cfg = write_config(base, {JOB: job}, settings={"encryption": {"age_recipients": [recipient]}})
        world = World(base, source, target, cfg, write_secret(tmp_path / "target.pw", target.root_password))
        segments = Segments(source, cfg, SegmentStore(world.store, JOB))
        assert segments.proc is not None, "this tree has the stream"
        try:
            segments.commit()
            assert main(["--config", str(cfg), "run", JOB]) == 0
            time.sleep(1.0)
            _workload(world, 3, 10)
            source.execute(f"UPDATE shop.items SET name = '{MARKER}-late' WHERE id = 2;")
            segments.commit()
        finally:
            segments.stop()

        segs = world.segments()
        assert segs and all(s.path.name.endswith(".zst.age") and s.manifest["encrypted"] for s in segs)
        # nothing under the store or state dirs holds the source's plaintext once the stream has ended
        holders = [p for p in base.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
        assert holders == []

        s = sorted(world.snapshots)[-1]
        argv = ["--config", str(cfg), "restore", JOB, "--until", second(s), "--to",
                f"mysql://root@{target.host}:{target.port}/shop", "--password-file", str(world.password_file),
                "--yes"]  # fmt: skip
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "--identity" in err, err
        assert target.execute("SHOW DATABASES LIKE 'shop'") == []
        rc, out, err = run_cli(capsys, *argv, "--identity", str(key))
        assert rc == 0, err
        assert rows(target, "shop") == world.snapshots[s]
        assert "transactions" in out
