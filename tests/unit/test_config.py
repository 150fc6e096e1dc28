"""Config loading: defaults merged under the user's file, every mistake a one-line error naming file + key."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.cli import main
from backupd.config import deep_merge, load_config
from backupd.errors import ConfigError
from backupd.settings import parse_duration


def write(base: Path, main_text: str = "", jobs: dict[str, str] | None = None, retention: str | None = None) -> Path:
    (base / "jobs").mkdir(parents=True, exist_ok=True)
    cfg = base / "backupd.toml"
    cfg.write_text(f'[storage]\nroot = "store"\n[state]\ndir = "state"\n{main_text}')
    for name, text in (jobs or {}).items():
        (base / "jobs" / f"{name}.toml").write_text(text)
    if retention is not None:
        (base / "retention.toml").write_text(retention)
    return cfg


FILES_JOB = 'type = "files"\nschedule = "@daily"\nsource = "/srv/www"\n'


def test_defaults_are_merged_under_the_user_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[scheduler]\ntimezone = "Europe/Tallinn"\n', {"site": FILES_JOB}))
    assert cfg.settings.scheduler.timezone == "Europe/Tallinn"
    assert cfg.settings.scheduler.max_concurrent_jobs == 2  # from the shipped defaults
    assert cfg.settings.compression.algorithm == "zstd" and cfg.settings.compression.level == 3
    assert cfg.store_root == tmp_path.resolve() / "store"  # relative to the config file
    assert cfg.job_timezone("site") == "Europe/Tallinn"
    assert cfg.jobs["site"].timeout == 6 * 3600


def test_deep_merge_replaces_leaves_and_merges_tables() -> None:
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2]}) == {"a": {"x": 1, "y": 3}, "b": [2]}


@pytest.mark.parametrize(
    ("job_text", "key", "message"),
    [
        (FILES_JOB + "exclud = []\n", "exclud", "unknown key"),
        (FILES_JOB.replace('"@daily"', '"61 * * * *"'), "schedule", ""),
        (FILES_JOB.replace('"@daily"', '"every day"'), "schedule", ""),
        (FILES_JOB + 'timeout = "forever"\n', "timeout", "duration"),
        (FILES_JOB + 'timezone = "Mars/Olympus"\n', "timezone", "unknown time zone"),
        ('type = "ftp"\nschedule = "@daily"\n', "type", "type must be one of"),
        ('schedule = "@daily"\n', "type", "required"),
        ('type = "files"\nschedule = "@daily"\n', "source", "required"),
        (FILES_JOB + '[ssh]\nhost = "h"\nkey_file = "/nonexistent/key"\n', "ssh.key_file", "does not exist"),
        (FILES_JOB + '[ssh]\nhost = "h"\nport = "22a"\n', "ssh.port", ""),
        (FILES_JOB + '[ssh]\nhost = "h"\nbwlimit = "fast"\n', "ssh.bwlimit", "KiB/s"),
        (FILES_JOB + '[ssh]\nhost = "h"\nbwlimit = 0\n', "ssh.bwlimit", "KiB/s"),
        ('type = "mysql"\nschedule = "@daily"\nvia_ssh = true\n', None, "via_ssh = true needs an [ssh] table"),
        ('type = "mongodb"\nschedule = "@daily"\nuri = "mongodb://u:secret@h/"\n', None, "password_file"),
    ],
)
def test_job_mistakes_name_file_and_key(tmp_path: Path, job_text: str, key: str | None, message: str) -> None:
    cfg = write(tmp_path, jobs={"site": job_text})
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert str(tmp_path / "jobs" / "site.toml") in text
    if key:
        assert f": {key}:" in text, text
    assert message in text
    assert "\n" not in text


def test_env_interpolation_and_missing_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_DIR", "/srv/site")
    cfg = load_config(write(tmp_path, jobs={"site": FILES_JOB.replace("/srv/www", "${SITE_DIR}/www")}))
    assert cfg.jobs["site"].source == "/srv/site/www"  # type: ignore[union-attr]
    cfg2 = write(tmp_path / "b", jobs={"site": FILES_JOB.replace("/srv/www", "${NOPE_NOT_SET}")})
    with pytest.raises(ConfigError, match="NOPE_NOT_SET is not set"):
        load_config(cfg2)
    cfg3 = write(tmp_path / "c", jobs={"site": FILES_JOB.replace("/srv/www", "${NOPE_NOT_SET:-/fallback}")})
    assert load_config(cfg3).jobs["site"].source == "/fallback"  # type: ignore[union-attr]


def test_password_file_must_exist_and_is_resolved_relative(tmp_path: Path) -> None:
    job = 'type = "redis"\nschedule = "@hourly"\npassword_file = "secrets/redis.pw"\n'
    cfg = write(tmp_path, jobs={"cache": job})
    with pytest.raises(ConfigError, match=r"password_file: file .*secrets/redis.pw does not exist"):
        load_config(cfg)
    (tmp_path / "jobs" / "secrets").mkdir()
    (tmp_path / "jobs" / "secrets" / "redis.pw").write_text("pw\n")
    loaded = load_config(cfg)
    assert loaded.jobs["cache"].password_file == tmp_path / "jobs" / "secrets" / "redis.pw"  # type: ignore[union-attr]


def test_global_typos_and_bad_values(tmp_path: Path) -> None:
    for text, key in [
        ("[schedulr]\n", "schedulr"),
        ('[scheduler]\ncatchup = "always"\n', "scheduler.catchup"),
        ("[compression]\nlevel = 99\n", "compression.level"),
        ("[s3]\nenabled = true\n", "s3"),
        ('[http]\nlisten = "nope"\n', "http"),
    ]:
        cfg = write(tmp_path / key, text)
        with pytest.raises(ConfigError) as err:
            load_config(cfg)
        assert f"{cfg}: {key}" in str(err.value), str(err.value)


def test_retention_validation(tmp_path: Path) -> None:
    cfg = write(tmp_path, jobs={"site": FILES_JOB}, retention="[default]\nkeep_daily = -1\n")
    with pytest.raises(ConfigError, match=r"retention.toml: default.keep_daily"):
        load_config(cfg)
    cfg = write(tmp_path, jobs={"site": FILES_JOB}, retention="[default]\nkeep_dayly = 3\n")
    with pytest.raises(ConfigError, match=r"default.keep_dayly: unknown key"):
        load_config(cfg)
    cfg = write(tmp_path, jobs={"site": FILES_JOB}, retention="[jobs.sight]\nkeep_last = 3\n")
    with pytest.raises(ConfigError, match=r"jobs.sight: no job named 'sight'"):
        load_config(cfg)
    cfg = write(
        tmp_path, jobs={"site": FILES_JOB}, retention="[jobs.site]\nkeep_last = 3\n[s3.default]\nkeep_daily = 9\n"
    )
    loaded = load_config(cfg)
    assert loaded.retention.local_for("site").keep_last == 3
    assert loaded.retention.s3_for("site").keep_daily == 9


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("6h") == 21600
    assert parse_duration("2d") == 172800
    assert parse_duration(42) == 42
    with pytest.raises(ValueError):
        parse_duration("6 hours")


def test_cli_exit_codes_for_config_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml"), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"backupd: config {tmp_path / 'missing.toml'}: file not found"
    cfg = write(tmp_path, jobs={"site": FILES_JOB})
    assert main(["--config", str(cfg), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "site" in out and "files" in out and "UTC" in out
    assert main(["--config", str(cfg), "run", "nope"]) == 2
    assert "unknown job 'nope'" in capsys.readouterr().err
    (tmp_path / "backupd.toml").write_text("[storage\n")
    assert main(["--config", str(cfg), "list"]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_config_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, jobs={"site": FILES_JOB})
    monkeypatch.setenv("BACKUPD_CONFIG", str(cfg))
    assert main(["check-config"]) == 0
    assert str(cfg) in capsys.readouterr().out


def test_secret_files_open_to_others_are_refused_or_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "db.password"
    pw.write_text("secret\n")
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    pw.chmod(0o644)
    key.chmod(0o600)
    job = (
        'type = "mysql"\nschedule = "@daily"\nvia_ssh = true\n'
        f'password_file = "{pw}"\n[ssh]\nhost = "db1"\nkey_file = "{key}"\n'
    )
    cfg = write(tmp_path, jobs={"db": job})
    config = load_config(cfg)
    assert config.warnings == [
        f"config {tmp_path / 'jobs' / 'db.toml'}: password_file: file {pw} is readable or writable by group or "
        "others (mode 0644): chmod 600 it"
    ]
    rc = main(["--config", str(cfg), "check-config"])
    assert rc == 0 and "backupd: warning: config" in capsys.readouterr().err
    pw.chmod(0o600)
    assert load_config(cfg).warnings == []
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"ssh\.key_file: file .* \(mode 0640\): chmod 600 it; ssh refuses"):
        load_config(cfg)


def test_an_age_identity_open_to_others_is_warned(tmp_path: Path) -> None:
    key = tmp_path / "age.key"
    key.write_text("AGE-SECRET-KEY-1QQQQ\n")
    key.chmod(0o644)
    cfg = write(tmp_path, f'[encryption]\nidentity_file = "{key}"\n', {"site": FILES_JOB})
    assert any("encryption.identity_file" in w and "mode 0644" in w for w in load_config(cfg).warnings)
    key.unlink()  # absent on the backup machine: that is the normal case, nothing to say
    assert load_config(cfg).warnings == []


def test_object_lock_keys(tmp_path: Path) -> None:
    s3 = '[s3]\nenabled = true\nbucket = "b"\n'
    for text, key, message in [
        ('object_lock = "compliance"\nobject_lock_days = 0\n', "s3", "object_lock_days must be 1..36500"),
        ('object_lock = "governance"\nobject_lock_days = -3\n', "s3", "object_lock_days must be 1..36500"),
        ('object_lock = "forever"\n', "s3.object_lock", "compliance"),
        ("object_lock_dayz = 30\n", "s3.object_lock_dayz", "unknown key"),
    ]:
        cfg = write(tmp_path / str(abs(hash(text))), s3 + text)
        with pytest.raises(ConfigError) as err:
            load_config(cfg)
        assert f"{cfg}: {key}" in str(err.value) and message in str(err.value), str(err.value)
    loaded = load_config(write(tmp_path / "ok", s3 + 'object_lock = "compliance"\n'))
    assert (loaded.settings.s3.object_lock, loaded.settings.s3.object_lock_days) == ("compliance", 30)
    assert load_config(write(tmp_path / "none", s3 + "object_lock_days = 0\n")).settings.s3.object_lock == "none"


def test_s3_retention_shorter_than_the_lock_is_warned(tmp_path: Path) -> None:
    s3 = '[s3]\nenabled = true\nbucket = "b"\nobject_lock = "compliance"\nobject_lock_days = 30\n'
    hourly = 'type = "files"\nschedule = "0 * * * *"\nsource = "/srv/www"\n'
    cfg = write(tmp_path / "short", s3, {"site": hourly}, retention="[s3.default]\nkeep_daily = 60\n")
    (warning,) = [w for w in load_config(cfg).warnings if "object_lock_days" in w]
    assert "retention.toml: job site: S3 retention deletes copies younger than s3.object_lock_days = 30" in warning
    # daily backups kept 60 days, or no S3 retention at all (keep everything): no warning
    for name, job, retention in [("long", FILES_JOB, "[s3.default]\nkeep_daily = 60\n"), ("empty", hourly, "")]:
        cfg = write(tmp_path / name, s3, {"site": job}, retention=retention)
        assert not [w for w in load_config(cfg).warnings if "object_lock_days" in w]
