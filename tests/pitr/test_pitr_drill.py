"""PITR drills: base N rolled forward to base N+1's position and compared with N+1's stats, plus a random
instant of the window; a removed or altered segment fails the drill, and plain and PITR drills alternate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.pitr.conftest import JOB, World


def drill(capsys: pytest.CaptureFixture[str], cfg: Path, *extra: str) -> tuple[int, list[dict[str, object]], str]:
    rc, out, err = run_cli(capsys, "--config", str(cfg), "drill", JOB, "--json", *extra)
    return rc, json.loads(out), err


def test_the_chain_drill_passes(pitr_world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = pitr_world.clone(tmp_path / "w")
    rc, reports, err = drill(capsys, cfg, "--pitr")
    assert rc == 0, err
    (report,) = reports
    checks = {c["check"]: c for c in report["checks"]}  # type: ignore[attr-defined]
    first = json.loads((pitr_world.store / JOB / pitr_world.bases[0] / "manifest.json").read_text())
    rows_first = next(a for a in first["artifacts"] if a["database"] == "shop")["stats"]["tables"]["items"]
    items = checks["pitr shop rows items"]
    assert items["ok"] and items["expected"] == items["actual"] > rows_first  # rolled forward, not just base N
    assert any(k.startswith("pitr shop replay to ") for k in checks)
    assert report["notes"][0] == "pitr drill"  # type: ignore[index]
    assert report["backup_id"] == pitr_world.bases[1]
    # shown like the other drills: the catalog has it, the next plain drill comes after it
    rc, reports, err = drill(capsys, cfg)
    assert rc == 0, err
    assert reports[0]["notes"][:1] != ["pitr drill"]  # type: ignore[index]
    rc, reports, err = drill(capsys, cfg)
    assert rc == 0, err
    assert reports[0]["notes"][:1] == ["pitr drill"], "a PITR job's drills alternate"  # type: ignore[index]


def test_the_chain_drill_fails_without_a_segment(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:  # fmt: skip
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    name = w.between_bases()[0]
    binlog = tmp_path / "w" / "store" / JOB / "binlog"
    (binlog / name).unlink()
    (binlog / (name.split(".")[0] + ".json")).unlink()
    rc, reports, _ = drill(capsys, cfg, "--pitr")
    assert rc == 1
    assert "a segment is missing" in str(reports[0]["error"])


def test_the_chain_drill_refuses_an_altered_segment(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:  # fmt: skip
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    name = w.between_bases()[-1]
    path = tmp_path / "w" / "store" / JOB / "binlog" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    rc, reports, _ = drill(capsys, cfg, "--pitr")
    assert rc == 1
    assert "sha256 does not match" in str(reports[0]["error"])


def test_the_chain_drill_verifies_the_older_base(pitr_world: World, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:  # fmt: skip
    """The base it rolls forward is re-hashed too, not only the newest one the drill is recorded against."""
    w = pitr_world
    cfg = w.clone(tmp_path / "w")
    bdir = tmp_path / "w" / "store" / JOB / w.bases[0]
    art = json.loads((bdir / "manifest.json").read_text())["artifacts"][0]
    path = bdir / art["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    rc, reports, _ = drill(capsys, cfg, "--pitr")
    assert rc == 1
    assert f"backup {w.bases[0]}: {art['file']}" in str(reports[0]["error"])
