"""The shipped units pass `systemd-analyze verify` and its offline security check; the timer drop-ins
written by `backupd systemd-units` (backups and restore drills) fire when the daemon would, DST change days
included (all of a drop-in's OnCalendar= values, merged as systemd does, checked with `systemd-analyze
calendar` against `backupd next`'s own computation)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.config import load_config
from backupd.daemon.scheduler import upcoming
from backupd.lab.content import write_config
from backupd.schedule import Schedule
from tests.conftest import SYSTEMD_ANALYZE, needs_systemd_analyze, systemd_elapses

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
pytestmark = needs_systemd_analyze
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"}
    )


def installed_copy(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this environment's backupd (verify checks that it exists)."""
    exe = shutil.which("backupd") or sys.executable
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/backupd", exe)
        (out / unit.name.replace("@.", "@demo.")).write_text(text)
    return out


def test_units_verify(tmp_path: Path) -> None:
    units = installed_copy(tmp_path)
    names = sorted(str(p) for p in units.iterdir())
    assert len(names) == 10  # backupd, run@, drill@, verify and notify (service + timer each but backupd), stream@
    result = analyze("verify", *names)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(
    "unit",
    ["backupd.service", "backupd-run@.service", "backupd-drill@.service", "backupd-verify.service",
     "backupd-notify.service", "backupd-stream@.service"],
)
def test_units_security_exposure(unit: str) -> None:
    result = analyze("security", "--offline=yes", str(UNITS / unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert m, result.stdout[-2000:] + result.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, result.stdout


def test_daemon_unit_contract() -> None:
    text = (UNITS / "backupd.service").read_text()
    for line in ("Type=notify", "User=backupd", "StateDirectory=backupd", "KillMode=mixed", "ExecReload="):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    timer = (UNITS / "backupd-run@.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer
    assert "SuccessExitStatus=75" in (UNITS / "backupd-run@.service").read_text()


def test_stream_unit_contract() -> None:
    """backupd-stream@ runs `backupd stream %i` for good, with the run unit's user, paths and hardening."""
    run = _settings((UNITS / "backupd-run@.service").read_text())
    stream = _settings((UNITS / "backupd-stream@.service").read_text())
    assert "ExecStart=/usr/local/bin/backupd --config /etc/backupd/backupd.toml stream %i" in stream
    assert "Restart=always" in stream and "SuccessExitStatus=75" in stream and "KillMode=mixed" in stream
    same = {"User", "Group", "StateDirectory", "UMask", "ProtectSystem", "SystemCallFilter", "PrivateUsers",
            "RestrictAddressFamilies", "NoNewPrivileges", "MemoryDenyWriteExecute"}
    for line in run:
        if line.split("=")[0] in same:
            assert line in stream, line


def test_notify_unit_contract() -> None:
    """backupd-notify runs `status --notify` every few minutes as the run unit's user, with its hardening."""
    service = (UNITS / "backupd-notify.service").read_text()
    assert "status --notify" in service and "User=backupd" in service and "SuccessExitStatus=1" in service
    run = (UNITS / "backupd-run@.service").read_text()
    hardening = [line for line in run.splitlines() if "=" in line and not line.startswith("#")
                 and line.split("=")[0] in {"NoNewPrivileges", "ProtectSystem", "SystemCallFilter", "PrivateUsers"}]
    for line in hardening:
        assert line in service
    timer = (UNITS / "backupd-notify.timer").read_text()
    assert "OnUnitActiveSec=" in timer and "Persistent=true" in timer


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_drill_unit_contract() -> None:
    """backupd-drill@ runs `backupd drill %i` with exactly the run unit's user, paths and hardening."""
    run = _settings((UNITS / "backupd-run@.service").read_text())
    drill = _settings((UNITS / "backupd-drill@.service").read_text())
    assert "ExecStart=/usr/local/bin/backupd --config /etc/backupd/backupd.toml drill %i" in drill
    assert "After=backupd-run@%i.service" in drill
    service = run[run.index("[Service]"):]
    differ = ("ExecStart=", "SuccessExitStatus=")
    assert [s for s in service if not s.startswith(differ)] == [
        s for s in drill[drill.index("[Service]"):] if not s.startswith(differ)
    ]
    for line in ("User=backupd", "StateDirectory=backupd", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
        assert line in drill
    assert not [s for s in drill if s.startswith(("PrivateNetwork=", "IPAddressDeny=", "ReadOnlyPaths="))]
    timer = (UNITS / "backupd-drill@.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer and "WantedBy=timers.target" in timer


def oncalendar(conf: str) -> list[str]:
    """A drop-in's OnCalendar= values, after the empty one that drops the template's placeholder."""
    values = re.findall(r"^OnCalendar=(.*)$", conf, re.M)
    assert values[0] == "" and "" not in values[1:], conf
    return values[1:]


def assert_fires_like_backupd_next(config: Path, out: Path, prefix: str, bases: list[datetime]) -> None:
    """Every timer's OnCalendar= values, merged as systemd merges them, elapse at `backupd next`'s times."""
    loaded = load_config(config)
    for base in bases:
        for row in upcoming(loaded, None, 6, base):
            if row["kind"] != ("backup" if prefix == "backupd-run" else "drill"):
                continue
            conf = (out / f"{prefix}@{row['job']}.timer.d" / "schedule.conf").read_text()
            values = oncalendar(conf)
            assert systemd_elapses(values, base, 6) == row["times"], (row["job"], base, values)


SCHEDULES = {
    "nightly": ("30 3 * * *", "Europe/Tallinn"),  # in Tallinn's spring gap and autumn's repeated hour
    "quarter": ("*/15 * * * *", "UTC"),
    "weekdays": ("0 22 * * 1-5", "America/New_York"),
    "monthly": ("@monthly", "Asia/Kolkata"),
    "odd": ("5,35 1-23/2 1,15 * *", "Europe/Berlin"),
    "sunday": ("15 2 * * 0", "Europe/Berlin"),  # weekly, in Berlin's spring gap
    "hourly": ("0 * * * *", "Australia/Sydney"),
}
# A normal week, and a few days before 2027's spring and autumn changes (Europe; Sydney's are in April and
# October too).
BASES = [datetime(2026, 6, 10, 12, 0, tzinfo=UTC), datetime(2027, 3, 26, 12, 0, tzinfo=UTC),
         datetime(2027, 10, 29, 12, 0, tzinfo=UTC), datetime(2027, 4, 2, 12, 0, tzinfo=UTC),
         datetime(2027, 10, 1, 12, 0, tzinfo=UTC)]


def test_systemd_units_command_and_calendar(tmp_path: Path) -> None:
    jobs = {n: {"type": "files", "source": "/srv", "schedule": e, "timezone": tz, "timeout": "2h"}
            for n, (e, tz) in SCHEDULES.items()}
    config = write_config(tmp_path / "cfg", jobs, settings={"scheduler": {"jitter": "5m"}})
    out = tmp_path / "out"
    result = systemd_units(config, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no dated values: every zone here has rule-shaped changes or none
    for name, (expr, _tz) in SCHEDULES.items():
        conf = (out / f"backupd-run@{name}.timer.d" / "schedule.conf").read_text()
        assert f"# {expr}\n" in conf and "RandomizedDelaySec=300s" in conf
        assert "TimeoutStartSec=7200s" in (out / f"backupd-run@{name}.service.d" / "timeout.conf").read_text()
    nightly = (out / "backupd-run@nightly.timer.d" / "schedule.conf").read_text()
    assert "OnCalendar=Sun *-03-25..31 04:00:00 Europe/Tallinn\n" in nightly  # the rule-shaped gap end
    assert "# Europe/Tallinn's clock changes, from tzdata for" in nightly
    assert oncalendar((out / "backupd-run@quarter.timer.d" / "schedule.conf").read_text()) == [
        "*-*-* *:00/15:00 UTC"
    ]
    assert_fires_like_backupd_next(config, out, "backupd-run", BASES)


def test_systemd_units_dated_values_warn(tmp_path: Path) -> None:
    """Morocco's changes follow Ramadan: dated values, a note in the drop-in and a warning naming the timer."""
    jobs = {"rabat": {"type": "files", "source": "/srv", "schedule": "30 2 * * *", "timezone": "Africa/Casablanca"},
            "noon": {"type": "files", "source": "/srv", "schedule": "0 12 * * *", "timezone": "Africa/Casablanca"}}
    config = write_config(tmp_path / "cfg", jobs)
    out = tmp_path / "out"
    result = systemd_units(config, out)
    assert result.returncode == 0, result.stderr
    last = datetime.now(UTC).year + 9
    assert result.stderr.splitlines() == [
        "backupd: warning: backupd-run@rabat.timer: Africa/Casablanca's DST changes follow no rule, so its "
        f"OnCalendar= values for them are dated and cover them until {last}; run `backupd systemd-units` again "
        f"before {last + 1}"
    ]
    conf = (out / "backupd-run@rabat.timer.d" / "schedule.conf").read_text()
    assert "follow no weekday rule" in conf and f"# Run `backupd systemd-units` again before {last + 1}." in conf
    assert oncalendar((out / "backupd-run@noon.timer.d" / "schedule.conf").read_text()) == [
        "*-*-* 12:00:00 Africa/Casablanca"
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    assert_fires_like_backupd_next(config, out, "backupd-run", [now, now + timedelta(days=365)])


def test_systemd_units_refuses_day_or(tmp_path: Path) -> None:
    jobs = {"both": {"type": "files", "source": "/srv", "schedule": "0 3 1 * 1"}}
    config = write_config(tmp_path / "cfg", jobs)
    result = subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), "systemd-units", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "both.toml" in result.stderr and "'0 3 1 * 1'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def systemd_units(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), "systemd-units", "--output", str(out)],
        capture_output=True, text=True, timeout=60,
    )


DRILLS = {
    "weekly": ("0 5 * * sun", "Europe/Tallinn"),
    "gap": ("30 2 * * sun", "Europe/Berlin"),
    "quarter": ("*/15 * * * *", "UTC"),
    "monthly": ("@monthly", "America/New_York"),
}


def test_drill_timer_dropins(tmp_path: Path) -> None:
    jobs: dict[str, dict[str, object]] = {
        n: {"type": "files", "source": "/srv", "schedule": "30 3 * * *", "timezone": tz, "timeout": "90m",
            "drill_schedule": e}
        for n, (e, tz) in DRILLS.items()
    }
    jobs["plain"] = {"type": "files", "source": "/srv", "schedule": "0 1 * * *"}
    jobs["off"] = {"type": "files", "source": "/srv", "schedule": "0 1 * * *", "enabled": False,
                   "drill_schedule": "0 4 * * *"}
    config = write_config(tmp_path / "cfg", jobs, settings={"scheduler": {"jitter": "2m"}})
    out = tmp_path / "out"
    result = systemd_units(config, out)
    assert result.returncode == 0, result.stderr
    for name, (expr, _tz) in DRILLS.items():
        conf = (out / f"backupd-drill@{name}.timer.d" / "schedule.conf").read_text()
        assert f"# {expr}\n" in conf and "OnCalendar=\n" in conf and "RandomizedDelaySec=120s" in conf
        assert "TimeoutStartSec=5400s" in (out / f"backupd-drill@{name}.service.d" / "timeout.conf").read_text()
        run_conf = (out / f"backupd-run@{name}.timer.d" / "schedule.conf").read_text()
        assert "# 30 3 * * *\n" in run_conf  # the backup timer keeps the backup schedule
    assert_fires_like_backupd_next(config, out, "backupd-drill", BASES[:3])
    assert (out / "backupd-run@plain.timer.d" / "schedule.conf").exists()
    assert not list(out.glob("backupd-drill@plain.*")) and not list(out.glob("*@off.*"))
    next_line = result.stdout.strip().splitlines()[-1]
    assert next_line.startswith("next: systemctl daemon-reload && systemctl enable --now ")
    assert set(next_line.split("--now ")[1].split()) == {
        *(f"backupd-run@{n}.timer" for n in [*DRILLS, "plain"]),
        *(f"backupd-drill@{n}.timer" for n in DRILLS),
        "backupd-verify.timer",
    }


def test_verify_timer_fires_at_the_daemons_instants(tmp_path: Path) -> None:
    """[scheduler] verify_schedule becomes backupd-verify.timer's drop-in, in the scheduler's zone; the timer
    fires where the daemon's verify entries do (the same cron rules), and systemd accepts the units."""
    from backupd.daemon.systemd_units import unit_dropins

    job = {"type": "files", "source": "/srv", "schedule": "@daily"}
    cfg = write_config(tmp_path / "etc", {"site": job},
                       settings={"scheduler": {"timezone": "Europe/Berlin", "verify_schedule": "15 2 * * 0"}})
    config = load_config(cfg)
    files = unit_dropins(config)
    conf = files["backupd-verify.timer.d/schedule.conf"]
    assert "# 15 2 * * 0\n" in conf and "Europe/Berlin" in conf and "backupd-verify.service.d/timeout.conf" not in files
    sched = Schedule.parse("15 2 * * 0", "Europe/Berlin")
    values = [line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("OnCalendar=") and "=" in line
              and line != "OnCalendar="]
    base = datetime(2027, 3, 20, tzinfo=UTC)
    want, t = [], base
    for _ in range(3):
        t = sched.next_after(t)
        want.append(t)
    assert systemd_elapses(values, base, 3) == want
    cfg = write_config(tmp_path / "etc2", {"site": job}, settings={"scheduler": {"verify_schedule": ""}})
    assert not any(k.startswith("backupd-verify") for k in unit_dropins(load_config(cfg)))


def test_drill_dropins_verify(tmp_path: Path) -> None:
    """The templates with the drop-ins `systemd-units` writes load without a warning (systemd 252 warns, for
    instance, that RuntimeMaxSec= has no effect on a Type=oneshot service)."""
    units = installed_copy(tmp_path)
    job = {"type": "files", "source": "/srv", "schedule": "30 2 * * *", "timeout": "3h",
           "drill_schedule": "15 4 * * mon-fri", "timezone": "Europe/Berlin"}  # several OnCalendar= lines
    result = systemd_units(write_config(tmp_path / "cfg", {"demo": job}), units)
    assert result.returncode == 0, result.stderr
    assert (units / "backupd-drill@demo.timer.d" / "schedule.conf").exists()
    assert len(oncalendar((units / "backupd-run@demo.timer.d" / "schedule.conf").read_text())) > 1
    names = sorted(str(p) for p in units.iterdir() if p.is_file())
    verify = analyze("verify", *names)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr


def test_systemd_units_refuses_day_or_drill_schedule(tmp_path: Path) -> None:
    jobs = {
        "fine": {"type": "files", "source": "/srv", "schedule": "0 2 * * *", "drill_schedule": "0 6 * * sat"},
        "both": {"type": "files", "source": "/srv", "schedule": "0 3 * * *", "drill_schedule": "0 4 1 * 1"},
    }
    config = write_config(tmp_path / "cfg", jobs)
    result = systemd_units(config, tmp_path / "o")
    assert result.returncode == 2
    assert "both.toml: drill_schedule:" in result.stderr and "'0 4 1 * 1'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
