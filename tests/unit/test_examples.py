"""The shipped example configs must stay valid as the schema changes (secret/key files aside)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from backupd.config import deep_merge, job_adapter
from backupd.settings import GlobalCfg, RetentionCfg

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "jobs").glob("*.toml")))
def test_example_jobs_validate(name: str) -> None:
    raw = tomllib.loads((ROOT / "jobs" / name).read_text())
    assert job_adapter().validate_python(raw).type == raw["type"]


def test_example_global_and_retention_validate() -> None:
    defaults = tomllib.loads(resources.files("backupd").joinpath("defaults.toml").read_text())
    user = tomllib.loads((ROOT / "backupd.toml").read_text())
    assert GlobalCfg.model_validate(deep_merge(defaults, user)).scheduler.timezone == "Europe/Tallinn"
    retention = RetentionCfg.model_validate(tomllib.loads((ROOT / "retention.toml").read_text()))
    assert retention.local_for("redis").keep_last == 24
