"""Load, merge and validate the configuration into typed objects (DESIGN.md 3).

Everything is checked at load time, so a typo never silently disables a backup: unknown keys, wrong types,
bad cron expressions, missing secret/key files all become one ConfigError naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from backupd.errors import ConfigError, UsageError

DEFAULT_CONFIG_PATH = Path("/etc/backupd/backupd.toml")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
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

    @model_validator(mode="after")
    def _complete(self) -> S3Cfg:
        if self.enabled and not self.bucket:
            raise ValueError("bucket is required when enabled = true")
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise ValueError("kms_key_id is required when sse = 'aws:kms'")
        return self


class HttpCfg(Strict):
    listen: str = "127.0.0.1:9187"

    @model_validator(mode="after")
    def _host_port(self) -> HttpCfg:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be HOST:PORT, got {self.listen!r}")
        return self


class NotifyCfg(Strict):
    webhook_url: str | None = None
    command: list[str] | None = None
    on: list[Literal["failure", "success", "overdue", "drill_failure"]] = ["failure"]


class LoggingCfg(Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class GlobalCfg(Strict):
    storage: StorageCfg
    state: StateCfg
    scheduler: SchedulerCfg = SchedulerCfg()
    compression: CompressionCfg = CompressionCfg()
    s3: S3Cfg = S3Cfg()
    http: HttpCfg = HttpCfg()
    notify: NotifyCfg = NotifyCfg()
    logging: LoggingCfg = LoggingCfg()
    jobs_dir: Path = Path("jobs")
    retention_file: Path = Path("retention.toml")


# ---------------------------------------------------------------- jobs


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
    schedule: str
    timezone: str | None = None
    enabled: bool = True
    timeout: Duration = 6 * 3600
    drill_schedule: str | None = None
    drill: DrillCfg = DrillCfg()
    compression: CompressionCfg | None = None  # replaces [compression] for this job (e.g. level 1 for RDBs)


class MySQLPart(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password_file: Path | None = None
    databases: list[str] = []
    via_ssh: bool = False


class MySQLJob(JobBase, MySQLPart):
    type: Literal["mysql"]
    ssh: SSHCfg | None = None

    @model_validator(mode="after")
    def _ssh_when_needed(self) -> MySQLJob:
        if self.via_ssh and self.ssh is None:
            raise ValueError("via_ssh = true needs an [ssh] table")
        return self


class FilesPart(Strict):
    source: str
    exclude: list[str] = []


class FilesJob(JobBase, FilesPart):
    type: Literal["files"]
    ssh: SSHCfg | None = None


class WordPressJob(JobBase):
    type: Literal["wordpress"]
    mysql: MySQLPart
    files: FilesPart
    ssh: SSHCfg

    @model_validator(mode="after")
    def _one_database(self) -> WordPressJob:
        if not self.mysql.databases:
            raise ValueError("mysql.databases must name the WordPress database")
        return self


class RedisJob(JobBase):
    type: Literal["redis"]
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    password_file: Path | None = None
    require_replica: bool = True
    bgsave: bool = True
    bgsave_timeout: Duration = 3600
    max_age: Duration = 3600
    rdb_path: str | None = None
    ssh: SSHCfg | None = None


class MongoJob(JobBase):
    type: Literal["mongodb"]
    uri: str
    password_file: Path | None = None
    read_preference: Literal["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"] = (
        "secondary"
    )
    oplog: bool | None = None
    engine: Literal["auto", "mongodump", "native"] = "auto"
    include: list[str] = []
    exclude: list[str] = []

    @model_validator(mode="after")
    def _no_password_in_uri(self) -> MongoJob:
        if re.match(r"^mongodb(\+srv)?://[^/@]*:[^/@]*@", self.uri):
            raise ValueError("uri must not contain a password: use password_file")
        return self


Job = MySQLJob | FilesJob | WordPressJob | RedisJob | MongoJob


class _JobFile(Strict):
    job: Annotated[Job, Field(discriminator="type")]


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


# ---------------------------------------------------------------- loading


@dataclass
class Config:
    path: Path
    settings: GlobalCfg
    jobs: dict[str, Job]
    job_files: dict[str, Path]
    retention: RetentionCfg
    retention_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def job(self, name: str) -> Job:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise UsageError(f"unknown job {name!r} (configured jobs: {known})") from None

    def job_timezone(self, name: str) -> str:
        return self.jobs[name].timezone or self.settings.scheduler.timezone

    @property
    def store_root(self) -> Path:
        return self.settings.storage.root

    @property
    def state_dir(self) -> Path:
        return self.settings.state.dir


def resolve_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("BACKUPD_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in `override` replaces the one in `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _interpolate(value: Any, file: Path, key: str) -> Any:
    """Replace ${NAME} / ${NAME:-default} in strings with the environment, recursively."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(file, key, f"environment variable {name} is not set")

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, file, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None


def _validation_error(path: Path, exc: ValidationError, strip: int = 0) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]][strip:]
    # discriminated unions put the tag in the location ("job.mysql.port"): drop it
    if len(loc) >= 1 and loc[0] in {"mysql", "files", "wordpress", "redis", "mongodb"} and strip:
        loc = loc[1:]
    key = ".".join(loc) or None
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = "type must be one of mongodb, redis, mysql, files, wordpress"
        key = "type"
    elif err["type"] == "union_tag_not_found":
        msg = "required key is missing"
        key = "type"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(path, key, msg)


def _rel(base: Path, p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


def _check_readable(file: Path, key: str, p: Path) -> None:
    if not p.is_file():
        raise ConfigError(file, key, f"file {p} does not exist")
    if not os.access(p, os.R_OK):
        raise ConfigError(file, key, f"file {p} is not readable")


def _resolve_job_paths(job: Job, base: Path, file: Path) -> Job:
    """Make relative paths absolute (relative to the job file) and check that secret/key files exist."""
    updates: dict[str, Any] = {}

    def fix_ssh(ssh: SSHCfg | None, prefix: str) -> SSHCfg | None:
        if ssh is None:
            return None
        upd: dict[str, Any] = {}
        for attr in ("key_file", "known_hosts"):
            value = getattr(ssh, attr)
            if value is not None:
                p = _rel(base, value)
                _check_readable(file, f"{prefix}{attr}", p)
                upd[attr] = p
        return ssh.model_copy(update=upd)

    if getattr(job, "password_file", None) is not None:
        p = _rel(base, job.password_file)  # type: ignore[union-attr,arg-type]
        _check_readable(file, "password_file", p)
        updates["password_file"] = p
    if hasattr(job, "ssh"):
        updates["ssh"] = fix_ssh(job.ssh, "ssh.")
    if isinstance(job, WordPressJob) and job.mysql.password_file is not None:
        p = _rel(base, job.mysql.password_file)
        _check_readable(file, "mysql.password_file", p)
        updates["mysql"] = job.mysql.model_copy(update={"password_file": p})
    return job.model_copy(update=updates)


def _check_schedule(file: Path, key: str, expr: str, tz: str) -> None:
    from backupd.schedule import Schedule

    try:
        Schedule.parse(expr, tz)
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None


def load_job(path: Path, default_tz: str) -> Job:
    raw = _interpolate(_read_toml(path), path, "")
    try:
        job = _JobFile.model_validate({"job": raw}).job
    except ValidationError as exc:
        raise _validation_error(path, exc, strip=1) from None
    tz = job.timezone or default_tz
    if job.timezone:
        _check_tz(path, "timezone", job.timezone)
    _check_schedule(path, "schedule", job.schedule, tz)
    if job.drill_schedule:
        _check_schedule(path, "drill_schedule", job.drill_schedule, tz)
    return _resolve_job_paths(job, path.parent, path)


def read_secret(path: Path | None) -> str | None:
    """A secret file's content without the trailing newline (editors add one)."""
    if path is None:
        return None
    return path.read_text().rstrip("\r\n")


def load_config(path: Path) -> Config:
    """Read backupd.toml (merged over the shipped defaults), every jobs/*.toml and retention.toml."""
    path = path.expanduser()
    defaults = tomllib.loads(resources.files("backupd").joinpath("defaults.toml").read_text())
    user = _interpolate(_read_toml(path), path, "")
    merged = deep_merge(defaults, user)
    try:
        settings = GlobalCfg.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(path, exc) from None
    base = path.parent.resolve()
    settings = settings.model_copy(
        update={
            "storage": StorageCfg(root=_rel(base, settings.storage.root)),
            "state": StateCfg(dir=_rel(base, settings.state.dir)),
            "jobs_dir": _rel(base, settings.jobs_dir),
            "retention_file": _rel(base, settings.retention_file),
        }
    )
    _check_tz(path, "scheduler.timezone", settings.scheduler.timezone)

    jobs: dict[str, Job] = {}
    files: dict[str, Path] = {}
    jobs_dir = settings.jobs_dir
    if jobs_dir.is_dir():
        for job_path in sorted(jobs_dir.glob("*.toml")):
            name = job_path.stem
            if not JOB_NAME_RE.match(name):
                raise ConfigError(job_path, None, "job file name must be letters, digits, '_', '-', '.'")
            jobs[name] = load_job(job_path, settings.scheduler.timezone)
            files[name] = job_path
    elif "jobs_dir" in user:
        raise ConfigError(path, "jobs_dir", f"directory {jobs_dir} does not exist")

    retention = RetentionCfg()
    retention_path: Path | None = None
    if settings.retention_file.is_file():
        retention_path = settings.retention_file
        raw = _interpolate(_read_toml(retention_path), retention_path, "")
        try:
            retention = RetentionCfg.model_validate(raw)
        except ValidationError as exc:
            raise _validation_error(retention_path, exc) from None
        for section, names in (("jobs", retention.jobs), ("s3.jobs", retention.s3.jobs)):
            for name in names:
                if name not in jobs:
                    raise ConfigError(retention_path, f"{section}.{name}", f"no job named {name!r}")
    elif "retention_file" in user:
        raise ConfigError(path, "retention_file", f"file {settings.retention_file} does not exist")

    return Config(
        path=path,
        settings=settings,
        jobs=jobs,
        job_files=files,
        retention=retention,
        retention_path=retention_path,
    )


def _check_tz(file: Path, key: str, tz: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(file, key, f"unknown time zone {tz!r}") from None
