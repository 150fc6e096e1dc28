"""The typed configuration every layer reads: global tables, the job base every source's model extends, the
loaded `Config`. Loading and validating files is `backupd.config`; each source's own job model lives with the
source (docs/architecture.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from backupd.errors import UsageError

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> int:
    """Seconds from an int or a string like "90s", "15m", "6h", "2d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30m, 6h or a number of seconds")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 30m, 6h or a number of seconds, got {value!r}")


Duration = Annotated[int, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- global config


class StorageCfg(Strict):
    root: Path


class StateCfg(Strict):
    dir: Path


class SchedulerCfg(Strict):
    timezone: str = "UTC"
    max_concurrent_jobs: int = Field(default=2, ge=1, le=64)
    catchup: Literal["once", "none"] = "once"
    jitter: Duration = 0
    verify_schedule: str = "0 5 * * 0"  # re-verify every stored backup (cron, scheduler timezone); "" disables


class CompressionCfg(Strict):
    algorithm: Literal["zstd", "gzip", "none"] = "zstd"
    level: int = Field(default=3, ge=-7, le=22)

    @model_validator(mode="after")
    def _level_fits(self) -> CompressionCfg:
        if self.algorithm == "gzip" and not 1 <= self.level <= 9:
            raise ValueError("gzip level must be 1..9")
        return self


class S3Cfg(Strict):
    enabled: bool = False
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    storage_class: str = "STANDARD"
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    profile: str | None = None
    # Transfers: botocore retries each request (standard mode, exponential backoff) up to max_attempts.
    max_attempts: int = Field(default=6, ge=1, le=20)
    connect_timeout: Duration = 10
    read_timeout: Duration = 120
    max_concurrency: int = Field(default=8, ge=1, le=64)
    # each scheduled verify also downloads and re-hashes this share of the copies' bytes, least recently read
    # first (0: metadata and checksums only)
    verify_read_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # S3 Object Lock: every object is uploaded locked in this mode until object_lock_days after its upload
    # (docs/s3-object-lock.md); the bucket must have Object Lock enabled
    object_lock: Literal["compliance", "governance", "none"] = "none"
    object_lock_days: int = 30

    @model_validator(mode="after")
    def _complete(self) -> S3Cfg:
        if self.enabled and not self.bucket:
            raise ValueError("bucket is required when enabled = true")
        if self.object_lock != "none" and not 1 <= self.object_lock_days <= 36500:
            raise ValueError(f"object_lock_days must be 1..36500 when object_lock = {self.object_lock!r}")
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise ValueError("kms_key_id is required when sse = 'aws:kms'")
        return self


class EncryptionCfg(Strict):
    """[encryption]: age X25519 recipients (public keys) every new artifact is encrypted to, and where the
    private key is on the machines that restore and drill. A job's own table replaces the global one.

    After loading, `age_recipients` holds the inline recipients and those of `age_recipients_file`;
    `identity_file` is checked only when something needs it (it may be absent on the backup machine)."""

    age_recipients: list[str] = []
    age_recipients_file: Path | None = None
    identity_file: Path | None = None


class HttpCfg(Strict):
    listen: str = "127.0.0.1:9187"
    status_page: Literal["full", "public", "off"] = "full"

    @model_validator(mode="after")
    def _host_port(self) -> HttpCfg:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return self


NotifyEvent = Literal[
    "failure", "success", "recovered", "overdue", "drill_failure", "verify_failure", "s3_failure", "s3_lag",
    "low_space", "pitr_gap", "notify_failure", "test",
]
DEFAULT_NOTIFY_ON: list[NotifyEvent] = [
    "failure", "recovered", "overdue", "drill_failure", "verify_failure", "s3_failure", "s3_lag", "low_space",
    "pitr_gap", "notify_failure",
]
# keys of the first [notify] table that are gone, and the one line saying what to write instead
_REPLACED_NOTIFY_KEYS = {
    "webhook_url": 'webhook_url was replaced by webhook_urls: write webhook_urls = ["..."]',
    "command": "command is no longer supported: use webhook_urls, apprise_urls or [notify.email] instead",
}


def _no_replaced_keys(data: object) -> object:
    if isinstance(data, dict):
        for key, message in _REPLACED_NOTIFY_KEYS.items():
            if key in data:
                raise ValueError(message)
    return data


class EmailCfg(Strict):
    """[notify.email]: SMTP with STARTTLS (or implicit TLS on port 465), certificates verified."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from")
    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    user: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # a private CA (or a self-signed server certificate) to trust instead


class NotifyCfg(Strict):
    """[notify]: which events, how often a persisting state is repeated, and the channels."""

    on: list[NotifyEvent] = DEFAULT_NOTIFY_ON
    repeat: Duration = 24 * 3600
    s3_lag: Duration = 6 * 3600
    low_space_margin: float = Field(default=1.5, ge=0)
    webhook_urls: list[str] = []
    webhook_urls_file: Path | None = None
    webhook_secret_file: Path | None = None
    apprise_urls: list[str] = []
    apprise_urls_file: Path | None = None
    email: EmailCfg | None = None
    timeout: Duration = 10  # per attempt and channel
    attempts: int = Field(default=3, ge=1, le=10)  # tries right away, with backoff, before the outbox
    outbox_attempts: int = Field(default=8, ge=0, le=100)  # later retries before "undeliverable"
    retry_interval: Duration = 60  # the outbox's first retry; doubled each time, at most 1h

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: object) -> object:
        return _no_replaced_keys(data)


class JobNotifyCfg(Strict):
    """A job's own [notify]: the keys it sets replace the global ones for that job."""

    on: list[NotifyEvent] | None = None
    repeat: Duration | None = None
    s3_lag: Duration | None = None
    low_space_margin: float | None = Field(default=None, ge=0)
    webhook_urls: list[str] | None = None
    webhook_urls_file: Path | None = None
    webhook_secret_file: Path | None = None
    apprise_urls: list[str] | None = None
    apprise_urls_file: Path | None = None
    email: EmailCfg | None = None
    timeout: Duration | None = None
    attempts: int | None = Field(default=None, ge=1, le=10)

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: object) -> object:
        return _no_replaced_keys(data)

    def over(self, base: NotifyCfg) -> NotifyCfg:
        return base.model_copy(update={k: getattr(self, k) for k in self.model_fields_set})


class LoggingCfg(Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class GlobalCfg(Strict):
    storage: StorageCfg
    state: StateCfg
    scheduler: SchedulerCfg = SchedulerCfg()
    compression: CompressionCfg = CompressionCfg()
    s3: S3Cfg = S3Cfg()
    encryption: EncryptionCfg | None = None
    http: HttpCfg = HttpCfg()
    notify: NotifyCfg = NotifyCfg()
    logging: LoggingCfg = LoggingCfg()
    jobs_dir: Path = Path("jobs")
    retention_file: Path = Path("retention.toml")


# ---------------------------------------------------------------- what every job has


class SSHCfg(Strict):
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    # rsync copies over this link (files, Redis) at most this fast: rsync's --bwlimit, KiB/s or "50M"
    bwlimit: str | None = None

    @field_validator("bwlimit", mode="before")
    @classmethod
    def _rate(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return str(v)  # KiB/s, as rsync reads a bare number
        if isinstance(v, str) and re.fullmatch(r"[1-9][0-9]*(\.[0-9]+)?[KMGkmg]?", v):
            return v
        if v is None:
            return v
        raise ValueError('must be a positive number of KiB/s or a rate like "50M"')

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def label(self) -> str:
        return self.host if self.port == 22 else f"{self.host}:{self.port}"


class DrillCfg(Strict):
    target: str | None = None


class JobBase(Strict):
    """What every job has; each source's model (in `backupd.sources`) adds `type` as a Literal and its keys."""

    type: str
    schedule: str
    timezone: str | None = None
    enabled: bool = True
    timeout: Duration = 6 * 3600
    drill_schedule: str | None = None
    # scheduled drills: "rotate" alternates the newest backup and the kept one drilled least recently
    drill_pick: Literal["newest", "rotate"] = "rotate"
    drill: DrillCfg = DrillCfg()
    compression: CompressionCfg | None = None  # replaces [compression] for this job (e.g. level 1 for RDBs)
    notify: JobNotifyCfg | None = None  # overrides [notify] key by key for this job
    encryption: EncryptionCfg | None = None  # replaces [encryption] for this job
    healthchecks_url: str | None = None  # a Healthchecks-compatible check pinged by every run
    healthchecks_url_file: Path | None = None


# ---------------------------------------------------------------- retention


class KeepCfg(Strict):
    keep_last: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)


class S3RetentionCfg(Strict):
    default: KeepCfg = KeepCfg()
    jobs: dict[str, KeepCfg] = {}


class RetentionCfg(Strict):
    default: KeepCfg = KeepCfg()
    jobs: dict[str, KeepCfg] = {}
    s3: S3RetentionCfg = S3RetentionCfg()

    def local_for(self, job: str) -> KeepCfg:
        return self.jobs.get(job, self.default)

    def s3_for(self, job: str) -> KeepCfg:
        return self.s3.jobs.get(job, self.s3.default)


# ---------------------------------------------------------------- the loaded configuration


@dataclass
class Config:
    path: Path
    settings: GlobalCfg
    jobs: dict[str, JobBase]
    job_files: dict[str, Path]
    retention: RetentionCfg
    retention_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    # job -> seconds that must stay restorable to any instant, for jobs with point-in-time recovery on
    # (filled from each source's PointInTime capability when the config is loaded; docs/pitr.md)
    pitr_windows: dict[str, float] = field(default_factory=dict)

    def job(self, name: str) -> JobBase:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UsageError(f"unknown job {name!r} (configured jobs: {known})") from None

    def notify_for(self, name: str | None) -> NotifyCfg:
        """The [notify] settings for a job (its own table over the global one), or the global ones."""
        job = self.jobs.get(name) if name else None
        if job is None or job.notify is None:
            return self.settings.notify
        return job.notify.over(self.settings.notify)

    def encryption_for(self, name: str | None) -> EncryptionCfg | None:
        """The [encryption] a job's backups get (its own table replaces the global one), or the global one."""
        job = self.jobs.get(name) if name else None
        if job is not None and job.encryption is not None:
            return job.encryption
        return self.settings.encryption

    def recipients_for(self, name: str) -> list[str]:
        enc = self.encryption_for(name)
        return list(enc.age_recipients) if enc is not None else []

    def job_timezone(self, name: str) -> str:
        return self.jobs[name].timezone or self.settings.scheduler.timezone

    @property
    def store_root(self) -> Path:
        return self.settings.storage.root

    @property
    def state_dir(self) -> Path:
        return self.settings.state.dir


def read_secret(path: Path | None) -> str | None:
    """A secret file's content without the trailing newline (editors add one)."""
    if path is None:
        return None
    return path.read_text().rstrip("\r\n")


