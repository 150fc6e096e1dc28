"""Load, merge and validate the configuration files into the typed `Config` (docs/configuration.md).

Everything is checked at load time, so a typo never silently disables a backup: unknown keys, wrong types,
bad cron expressions, missing secret/key files all become one ConfigError naming the file and the key.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from backupd.engine.crypto import parse_recipient, read_key_lines
from backupd.errors import ConfigError
from backupd.notify.channels import http_url_problem, problems
from backupd.schedule import Schedule
from backupd.settings import (
    Config,
    EncryptionCfg,
    GlobalCfg,
    JobBase,
    JobNotifyCfg,
    NotifyCfg,
    RetentionCfg,
    StateCfg,
    StorageCfg,
)
from backupd.sources import job_models, source_for, source_types
from backupd.sources.base import PointInTime

DEFAULT_CONFIG_PATH = Path("/etc/backupd/backupd.toml")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# files that hold a secret (URLs with tokens included): 0600 expected
SECRET_KEYS = {
    "password_file", "key_file", "webhook_secret_file", "healthchecks_url_file", "apprise_urls_file", "identity_file",
}
# file keys only resolved at load time: checked when something needs them (docs/security.md)
OPTIONAL_FILE_KEYS = {"identity_file"}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ---------------------------------------------------------------- loading


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


@functools.cache
def job_adapter() -> TypeAdapter[JobBase]:
    """The union of every source's job model, told apart by `type`: the registry is the only list."""
    models = job_models()
    union: Any = models[0] if len(models) == 1 else Union[models]  # noqa: UP007 (built at run time)
    adapter: TypeAdapter[JobBase] = TypeAdapter(Annotated[union, Field(discriminator="type")])
    return adapter


def _validation_error(path: Path, exc: ValidationError, tagged: bool = False) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # a job's discriminated union puts the tag in the location ("mysql.port"): drop it
    if tagged and len(loc) >= 1 and loc[0] in source_types():
        loc = loc[1:]
    key = ".".join(loc) or None
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"type must be one of {', '.join(source_types())}"
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


def _resolve_paths(
    model: BaseModel, base: Path, file: Path, warnings: list[str], prefix: str = ""
) -> BaseModel:
    """Make every file key (`*_file`, `known_hosts`) of a job absolute (relative to the job file) and check it
    is readable, in nested tables too: the walk is by field name, so a new source's keys need nothing here.
    Secret files open to group or others are refused (SSH keys: OpenSSH itself refuses them) or warned of."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, Path) and name in OPTIONAL_FILE_KEYS:  # checked when used; its mode when present
            updates[name] = _rel(base, value)
            if updates[name].is_file():
                _check_private(file, key, updates[name], warnings)
        elif isinstance(value, Path) and (name.endswith("_file") or name == "known_hosts"):
            p = _rel(base, value)
            _check_readable(file, key, p)
            _check_private(file, key, p, warnings)
            updates[name] = p
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base, file, warnings, f"{key}.")
    return model.model_copy(update=updates) if updates else model


def _check_private(file: Path, key: str, path: Path, warnings: list[str]) -> None:
    name = key.rsplit(".", 1)[-1]
    if name not in SECRET_KEYS:
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    what = f"file {path} is readable or writable by group or others (mode {mode:04o}): chmod 600 it"
    if name == "key_file":
        raise ConfigError(file, key, f"{what}; ssh refuses such a key")
    warnings.append(f"config {file}: {key}: {what}")


def _check_schedule(file: Path, key: str, expr: str, tz: str) -> None:
    try:
        Schedule.parse(expr, tz)
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None


def load_job(path: Path, default_tz: str, warnings: list[str] | None = None) -> JobBase:
    raw = _interpolate(_read_toml(path), path, "")
    try:
        job = job_adapter().validate_python(raw)
    except ValidationError as exc:
        raise _validation_error(path, exc, tagged=True) from None
    tz = job.timezone or default_tz
    if job.timezone:
        _check_tz(path, "timezone", job.timezone)
    _check_schedule(path, "schedule", job.schedule, tz)
    if job.drill_schedule:
        _check_schedule(path, "drill_schedule", job.drill_schedule, tz)
    resolved = _resolve_paths(job, path.parent, path, warnings if warnings is not None else [])
    assert isinstance(resolved, JobBase)
    if resolved.notify is not None:
        _check_notify(path, "notify.", resolved.notify)
    if resolved.encryption is not None:
        resolved = resolved.model_copy(update={"encryption": _check_encryption(path, resolved.encryption)})
    if resolved.healthchecks_url and resolved.healthchecks_url_file:
        raise ConfigError(path, "healthchecks_url", "set healthchecks_url or healthchecks_url_file, not both")
    hc = resolved.healthchecks_url or (
        resolved.healthchecks_url_file.read_text().strip() if resolved.healthchecks_url_file else None
    )
    if hc is not None and (problem := http_url_problem(hc)) is not None:
        key = "healthchecks_url" if resolved.healthchecks_url else "healthchecks_url_file"
        raise ConfigError(path, key, problem)
    return resolved


def _check_encryption(file: Path, cfg: EncryptionCfg) -> EncryptionCfg:
    """Every recipient parses (inline and from `age_recipients_file`, which must hold at least one); the
    loaded table lists them all in `age_recipients`."""
    found: list[tuple[str, str]] = [(f"encryption.age_recipients[{i}]", r) for i, r in enumerate(cfg.age_recipients)]
    if cfg.age_recipients_file is not None:
        lines = read_key_lines(cfg.age_recipients_file)
        if not lines:
            raise ConfigError(file, "encryption.age_recipients_file",
                              f"file {cfg.age_recipients_file} holds no recipient")
        found += [(f"encryption.age_recipients_file ({cfg.age_recipients_file})", r) for r in lines]
    for key, text in found:
        try:
            parse_recipient(text)
        except ValueError as exc:
            raise ConfigError(file, key, str(exc)) from None
    recipients = list(dict.fromkeys(r.strip() for _, r in found))
    return cfg.model_copy(update={"age_recipients": recipients})


def _check_notify(file: Path, prefix: str, cfg: NotifyCfg | JobNotifyCfg) -> None:
    """Bad webhook URLs, unknown Apprise schemes or a missing apprise extra stop the load, naming the key."""
    found = problems(cfg)
    if found:
        key, problem = found[0]
        raise ConfigError(file, f"{prefix}{key}", problem)


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
    warnings: list[str] = []
    notify = _resolve_paths(settings.notify, base, path, warnings, "notify.")
    assert isinstance(notify, NotifyCfg)
    _check_notify(path, "notify.", notify)
    settings = settings.model_copy(update={"notify": notify})
    if settings.encryption is not None:
        enc = _resolve_paths(settings.encryption, base, path, warnings, "encryption.")
        assert isinstance(enc, EncryptionCfg)
        settings = settings.model_copy(update={"encryption": _check_encryption(path, enc)})
    _check_tz(path, "scheduler.timezone", settings.scheduler.timezone)
    if settings.scheduler.verify_schedule:
        _check_schedule(path, "scheduler.verify_schedule", settings.scheduler.verify_schedule,
                        settings.scheduler.timezone)

    jobs: dict[str, JobBase] = {}
    files: dict[str, Path] = {}
    jobs_dir = settings.jobs_dir
    if jobs_dir.is_dir():
        for job_path in sorted(jobs_dir.glob("*.toml")):
            name = job_path.stem
            if not JOB_NAME_RE.match(name):
                raise ConfigError(job_path, None, "job file name must be letters, digits, '_', '-', '.'")
            jobs[name] = load_job(job_path, settings.scheduler.timezone, warnings)
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

    config = Config(
        path=path,
        settings=settings,
        jobs=jobs,
        job_files=files,
        retention=retention,
        retention_path=retention_path,
        warnings=warnings,
        pitr_windows=_pitr_windows(jobs),
    )
    from backupd.store.s3_lock import retention_warnings

    where = retention_path or path
    warnings.extend(f"config {where}: {w}" for w in retention_warnings(config))
    return config


def _pitr_windows(jobs: dict[str, JobBase]) -> dict[str, float]:
    """The window of each job whose source offers point-in-time recovery and has it on."""
    out: dict[str, float] = {}
    for name, job in jobs.items():
        source = source_for(job)
        if isinstance(source, PointInTime) and source.pitr_enabled(job):
            out[name] = source.pitr_window(job)
    return out


def _check_tz(file: Path, key: str, tz: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(file, key, f"unknown time zone {tz!r}") from None
