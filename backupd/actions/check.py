"""`check-config --connect`: prove each job's source is reachable without making a backup."""

from __future__ import annotations

from backupd.settings import Config
from backupd.sources import source_for


def check_job(config: Config, name: str) -> str:
    """The source's own reachability lines, joined; raises StepError naming host and step."""
    job = config.job(name)
    return ", ".join(source_for(job).check_reachable(job)) or "nothing to check"
