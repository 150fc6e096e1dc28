"""A job's own [compression] table replaces the global one, for that job only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backupd.cli import main as cli
from backupd.engine.compression import open_decompressed
from backupd.lab.content import write_config


def test_job_compression_overrides_the_global_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n" * 1000)
    (src / "b.bin").write_bytes(os.urandom(10_000))
    base = {"type": "files", "source": str(src), "schedule": "@daily"}
    jobs = {
        "plain": {**base, "compression": {"algorithm": "none"}},
        "gz": {**base, "compression": {"algorithm": "gzip", "level": 1}},
        "default": base,
    }
    cfg = write_config(tmp_path / "etc", jobs, settings={"compression": {"algorithm": "zstd", "level": 5}})
    assert cli(["--config", str(cfg), "run", "--all"]) == 0, capsys.readouterr().err
    found = {}
    for job in jobs:
        [backup] = [p for p in (tmp_path / "etc" / "store" / job).iterdir() if not p.name.startswith(".")]
        art = json.loads((backup / "manifest.json").read_text())["artifacts"][0]
        algo, stream = open_decompressed(backup / art["file"])
        with stream:
            assert len(stream.read()) == art["raw_bytes"]
        found[job] = (art["file"], art["compression"], algo)
    assert found["plain"][1:] == ("none", "none") and not found["plain"][0].endswith((".zst", ".gz"))
    assert found["gz"][1:] == ("gzip", "gzip") and found["gz"][0].endswith(".gz")
    assert found["default"][1:] == ("zstd", "zstd") and found["default"][0].endswith(".zst")
