"""`check-config --connect`: prove each job's source is reachable without making a backup."""

from __future__ import annotations

from backupd.actions.keys import load_keys
from backupd.engine.crypto import fingerprint
from backupd.errors import BackupdError
from backupd.settings import Config
from backupd.sources import source_for
from backupd.store.s3 import Bucket, S3Error, error_text


def check_job(config: Config, name: str) -> str:
    """The source's own reachability lines, joined; raises StepError naming host and step."""
    from backupd.actions.stream import check_pitr

    job = config.job(name)
    lines = source_for(job).check_reachable(job) + check_pitr(config, name)
    return ", ".join(lines) or "nothing to check"


def identity_warnings(config: Config) -> list[str]:
    """Jobs whose recipients no available identity matches: restores and drills of their new backups would
    fail here. Only where an identity is available at all (the backup machine may hold none, by design)."""
    out = []
    for name in sorted(config.jobs):
        recipients = config.recipients_for(name)
        if not recipients:
            continue
        try:
            keys = load_keys(config, name, None, "check-config")
        except BackupdError as exc:
            out.append(f"job {name}: {exc}")
            continue
        if not keys.identities:
            continue
        wanted = {fingerprint(r) for r in recipients}
        if not keys.fingerprints & wanted:
            out.append(
                f"job {name}: the age identity from {keys.where} matches none of the job's recipients"
                f" ({', '.join(sorted(wanted))}): restores and drills of its new backups need another key"
            )
    return out


def check_s3(config: Config) -> str:
    """The bucket is reachable and, with `object_lock` set, has Object Lock enabled; raises S3Error."""
    cfg = config.settings.s3
    bucket = Bucket(cfg)
    try:
        bucket.client.head_bucket(Bucket=bucket.name)
    except Exception as exc:
        raise S3Error(f"bucket {bucket.name}: {error_text(exc)}") from None
    if cfg.object_lock == "none":
        return f"s3: bucket {bucket.name} reachable"
    bucket.require_object_lock()
    return f"s3: bucket {bucket.name} reachable, Object Lock enabled ({cfg.object_lock}, {cfg.object_lock_days} days)"
