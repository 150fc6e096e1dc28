"""The shipped units pass `systemd-analyze verify` and its offline security check; the timer drop-ins
written by `backupd systemd-units` (backups and restore drills) fire when the daemon would (checked with
`systemd-analyze calendar`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupd.lab.content import write_config
from backupd.schedule import Schedule

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"})


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
    assert len(names) == 7
    result = analyze("verify", *names)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(
    "unit", ["backupd.service", "backupd-run@.service", "backupd-drill@.service", "backupd-notify.service"]
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


def _elapses(output: str) -> list[datetime]:
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", output)
    return [datetime.strptime(f, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for f in found]


SCHEDULES = {
    "nightly": ("30 3 * * *", "Europe/Tallinn"),
    "quarter": ("*/15 * * * *", "UTC"),
    "weekdays": ("0 22 * * 1-5", "America/New_York"),
    "monthly": ("@monthly", "Asia/Kolkata"),
    "odd": ("5,35 1-23/2 1,15 * *", "Europe/Berlin"),
}


def test_systemd_units_command_and_calendar(tmp_path: Path) -> None:
    jobs = {n: {"type": "files", "source": "/srv", "schedule": e, "timezone": tz, "timeout": "2h"}
            for n, (e, tz) in SCHEDULES.items()}
    config = write_config(tmp_path / "cfg", jobs, settings={"scheduler": {"jitter": "5m"}})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "backupd", "--config", str(config), "systemd-units", "--output", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    base = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # no DST change within the checked runs
    for name, (expr, tz) in SCHEDULES.items():
        conf = (out / f"backupd-run@{name}.timer.d" / "schedule.conf").read_text()
        assert "OnCalendar=\n" in conf and "RandomizedDelaySec=300s" in conf
        calendar = re.findall(r"^OnCalendar=(.+)$", conf, re.M)[0]
        cal = analyze("calendar", "--iterations=5", f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC", calendar)
        assert cal.returncode == 0, cal.stderr
        assert _elapses(cal.stdout) == Schedule.parse(expr, tz).iter_after(base, 5), (name, calendar, cal.stdout)
        assert "TimeoutStartSec=7200s" in (out / f"backupd-run@{name}.service.d" / "timeout.conf").read_text()


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
    base = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
    for name, (expr, tz) in DRILLS.items():
        conf = (out / f"backupd-drill@{name}.timer.d" / "schedule.conf").read_text()
        assert f"# {expr}\n" in conf and "OnCalendar=\n" in conf and "RandomizedDelaySec=120s" in conf
        calendar = re.findall(r"^OnCalendar=(.+)$", conf, re.M)[0]
        cal = analyze("calendar", "--iterations=5", f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC", calendar)
        assert cal.returncode == 0, cal.stderr
        assert _elapses(cal.stdout) == Schedule.parse(expr, tz).iter_after(base, 5), (name, calendar, cal.stdout)
        assert "TimeoutStartSec=5400s" in (out / f"backupd-drill@{name}.service.d" / "timeout.conf").read_text()
        run_conf = (out / f"backupd-run@{name}.timer.d" / "schedule.conf").read_text()
        assert "# 30 3 * * *\n" in run_conf  # the backup timer keeps the backup schedule
    assert (out / "backupd-run@plain.timer.d" / "schedule.conf").exists()
    assert not list(out.glob("backupd-drill@plain.*")) and not list(out.glob("*@off.*"))
    next_line = result.stdout.strip().splitlines()[-1]
    assert next_line.startswith("next: systemctl daemon-reload && systemctl enable --now ")
    assert set(next_line.split("--now ")[1].split()) == {
        *(f"backupd-run@{n}.timer" for n in [*DRILLS, "plain"]),
        *(f"backupd-drill@{n}.timer" for n in DRILLS),
    }


def test_drill_dropins_verify(tmp_path: Path) -> None:
    """The templates with the drop-ins `systemd-units` writes load without a warning (systemd 252 warns, for
    instance, that RuntimeMaxSec= has no effect on a Type=oneshot service)."""
    units = installed_copy(tmp_path)
    job = {"type": "files", "source": "/srv", "schedule": "0 1 * * *", "timeout": "3h",
           "drill_schedule": "15 4 * * mon-fri", "timezone": "Europe/Berlin"}
    result = systemd_units(write_config(tmp_path / "cfg", {"demo": job}), units)
    assert result.returncode == 0, result.stderr
    assert (units / "backupd-drill@demo.timer.d" / "schedule.conf").exists()
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
