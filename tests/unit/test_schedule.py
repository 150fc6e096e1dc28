"""backupd.schedule: hand-computed fire-time tables, DST rules, systemd parity and grammar-driven properties.

Zone facts used below (2026): Europe/Tallinn is EET (+2) / EEST (+3), spring forward on 29 March at
03:00 local (01:00 UTC), fall back on 25 October at 04:00 EEST (01:00 UTC) to 03:00 EET.
America/New_York is EST (-5) / EDT (-4), spring forward on 8 March at 02:00 EST (07:00 UTC), fall back on
1 November at 02:00 EDT (06:00 UTC) to 01:00 EST.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupd.schedule import Schedule, TimerCalendar, format_local_and_utc, systemd_calendar
from tests.conftest import needs_systemd_analyze, systemd_elapses

TALLINN = "Europe/Tallinn"
NEW_YORK = "America/New_York"


def z(text: str) -> datetime:
    """'2026-03-29 01:00' -> aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("expr", "first_after_2026_06_10"),
    [
        ("@hourly", "2026-06-10 01:00"),
        ("@daily", "2026-06-11 00:00"),
        ("@midnight", "2026-06-11 00:00"),
        ("@weekly", "2026-06-14 00:00"),  # 2026-06-10 is a Wednesday; next Sunday is the 14th
        ("@monthly", "2026-07-01 00:00"),
        ("@yearly", "2027-01-01 00:00"),
        ("@annually", "2027-01-01 00:00"),
        ("0 12 * jun wed", "2026-06-10 12:00"),
        ("0 12 * JUN Wed", "2026-06-10 12:00"),
        ("  5 4   * * *  ", "2026-06-10 04:05"),
        ("0 0 * * 7", "2026-06-14 00:00"),  # 7 is Sunday, like 0
        ("0-30/10 6 * * *", "2026-06-10 06:00"),
        # croniter 7 reads these as every minute / 0,3,6,...: check we do not.
        ("5-5 * * * *", "2026-06-10 00:05"),
        ("7-7/3 * * * *", "2026-06-10 00:07"),
        ("0 3-3 * * *", "2026-06-10 03:00"),
        ("0 0 * * 0-0", "2026-06-14 00:00"),
        ("50/20 * * * *", "2026-06-10 00:50"),  # 50-59/20 = 50 only
    ],
)
def test_accepted_expressions(expr: str, first_after_2026_06_10: str) -> None:
    schedule = Schedule.parse(expr, "UTC")
    assert schedule.next_after(z("2026-06-10 00:00")) == z(first_after_2026_06_10)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * * * *", "has 6 fields; expected 5"),
        ("0 0 0 1 1 * 2030", "has 7 fields; expected 5"),
        ("@reboot", "unsupported cron macro '@reboot'"),
        ("@every 5m", "unsupported cron macro"),
        ("", "empty cron expression"),
        ("   ", "empty cron expression"),
        ("nonsense", "has 1 field; expected 5"),
        ("0 0 L * *", "bad day-of-month field 'L' ('l' is not a number)"),
        ("0 0 * * 1#2", "bad day-of-week field '1#2' (use numbers, names, * , - / only)"),
        ("0 0 ? * *", "bad day-of-month field '?'"),
        ("H * * * *", "bad minute field 'H'"),
        ("0 0 15W * *", "bad day-of-month field '15W'"),
        ("0 0 * foo *", "bad month field 'foo' ('foo' is not a number or name)"),
        ("0 0 * * jan", "bad day-of-week field 'jan'"),
        ("0 mon * * *", "bad hour field 'mon' ('mon' is not a number)"),
        ("60 * * * *", "cron expression '60 * * * *': bad minute field '60' (60 is outside 0-59)"),
        ("0 24 * * *", "bad hour field '24' (24 is outside 0-23)"),
        ("0 0 0 * *", "bad day-of-month field '0' (0 is outside 1-31)"),
        ("0 0 32 * *", "(32 is outside 1-31)"),
        ("0 0 * 13 *", "(13 is outside 1-12)"),
        ("0 0 * * 8", "(8 is outside 0-7)"),
        ("0 5-3 * * *", "(range '5-3' runs backwards)"),
        ("0 0 * * fri-mon", "(range 'fri-mon' runs backwards)"),
        ("*/0 * * * *", "(step must be at least 1)"),
        ("1,,2 * * * *", "bad minute field '1,,2'"),
        ("*/5/2 * * * *", "bad minute field"),
        ("-5 * * * *", "bad minute field"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_rejected_expressions(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        Schedule.parse(expr, "UTC")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "utc", "", "../etc/passwd", "/etc/localtime", "Europe/Tallinn "])
def test_unknown_zone(tz: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        Schedule.parse("0 0 * * *", tz)


def test_attributes() -> None:
    schedule = Schedule.parse("@daily", TALLINN)
    assert (schedule.expr, schedule.tz, schedule.zone) == ("@daily", TALLINN, ZoneInfo(TALLINN))


def test_naive_datetimes_are_refused() -> None:
    schedule = Schedule.parse("@daily", "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.latest_at_or_before(datetime(2026, 1, 1))


# ------------------------------------------------------------------------------------ fire-time tables


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # Spring forward, fixed time inside the gap: runs at the end of the gap (04:00 EEST = 01:00 UTC).
        ("30 3 * * *", TALLINN, "2026-03-27 00:00",
         ["2026-03-27 01:30", "2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"]),
        # The gap starts at 03:00 itself: 03:00 local does not exist either.
        ("0 3 * * *", TALLINN, "2026-03-28 12:00", ["2026-03-29 01:00", "2026-03-30 00:00"]),
        ("30 2 * * *", NEW_YORK, "2026-03-07 00:00",
         ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"]),
        ("0 2 * * *", NEW_YORK, "2026-03-07 12:00", ["2026-03-08 07:00", "2026-03-09 06:00"]),
        # Steps across spring forward: 03:00..03:45 all collapse into 04:00 EEST; real 15-minute rhythm.
        ("*/15 * * * *", TALLINN, "2026-03-29 00:20",
         ["2026-03-29 00:30", "2026-03-29 00:45", "2026-03-29 01:00", "2026-03-29 01:15"]),
        # Hourly at :30 gets one extra run: 02:30 EET, (03:30 ->) 04:00 EEST, 04:30 EEST, 05:30 EEST.
        ("30 * * * *", TALLINN, "2026-03-29 00:00",
         ["2026-03-29 00:30", "2026-03-29 01:00", "2026-03-29 01:30", "2026-03-29 02:30"]),
        # Fall back, fixed time in the repeated hour: first occurrence only (03:30 EEST = 00:30 UTC).
        ("30 3 * * *", TALLINN, "2026-10-24 00:00",
         ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"]),
        ("30 1 * * *", NEW_YORK, "2026-10-31 00:00",
         ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"]),
        # Steps across fall back: the second pass of 03:00-03:59 (01:00-01:59 UTC) is not run.
        ("*/15 * * * *", TALLINN, "2026-10-25 00:20",
         ["2026-10-25 00:30", "2026-10-25 00:45", "2026-10-25 02:00", "2026-10-25 02:15"]),
        ("0 * * * *", NEW_YORK, "2026-11-01 04:30",
         ["2026-11-01 05:00", "2026-11-01 07:00", "2026-11-01 08:00"]),
        # Starting inside the second pass must not re-run first-pass wall times.
        ("*/15 * * * *", TALLINN, "2026-10-25 01:10", ["2026-10-25 02:00", "2026-10-25 02:15"]),
        ("45 3 * * *", TALLINN, "2026-10-25 01:10", ["2026-10-26 01:45"]),
        # Month ends: the 31st skips short months.
        ("0 0 31 * *", "UTC", "2026-01-01 00:00",
         ["2026-01-31 00:00", "2026-03-31 00:00", "2026-05-31 00:00", "2026-07-31 00:00",
          "2026-08-31 00:00", "2026-10-31 00:00", "2026-12-31 00:00"]),
        ("0 0 29 2 *", "UTC", "2026-03-01 00:00", ["2028-02-29 00:00", "2032-02-29 00:00"]),
        ("0 0 29 2 *", TALLINN, "2026-03-01 00:00", ["2028-02-28 22:00"]),
        ("@weekly", "UTC", "2026-11-28 18:00", ["2026-11-29 00:00", "2026-12-06 00:00"]),
        ("@monthly", TALLINN, "2026-11-28 00:00", ["2026-11-30 22:00", "2026-12-31 22:00"]),
        ("@monthly", NEW_YORK, "2026-02-15 00:00", ["2026-03-01 05:00", "2026-04-01 04:00"]),
        ("@yearly", NEW_YORK, "2026-06-01 00:00", ["2027-01-01 05:00"]),
        # Both day fields restricted: OR (1st, 15th and Fridays; 2026-05-01 is a Friday).
        ("0 0 1,15 * fri", "UTC", "2026-04-30 00:00",
         ["2026-05-01 00:00", "2026-05-08 00:00", "2026-05-15 00:00", "2026-05-22 00:00",
          "2026-05-29 00:00", "2026-06-01 00:00", "2026-06-05 00:00"]),
        # Day-of-month starting with '*': AND (Mondays with odd day numbers).
        ("0 0 */2 * mon", "UTC", "2026-03-01 00:00",
         ["2026-03-09 00:00", "2026-03-23 00:00", "2026-04-13 00:00", "2026-04-27 00:00"]),
        ("0 9-17/4 * * 1-5", "UTC", "2026-11-27 10:00",
         ["2026-11-27 13:00", "2026-11-27 17:00", "2026-11-30 09:00"]),
    ],
)
def test_fire_time_table(expr: str, tz: str, after: str, expected: list[str]) -> None:
    fires = Schedule.parse(expr, tz).iter_after(z(after), len(expected))
    assert fires == [z(e) for e in expected]
    assert all(f.tzinfo is UTC for f in fires)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", "2026-06-01 12:00"),
        (TALLINN, "2026-06-01 09:00"),  # EEST +3
        (NEW_YORK, "2026-06-01 16:00"),  # EDT -4
        ("Asia/Kolkata", "2026-06-01 06:30"),  # +5:30
        ("Australia/Sydney", "2026-06-01 02:00"),  # AEST +10 (southern winter)
        ("Pacific/Chatham", "2026-06-01 23:15"),  # +12:45: today's noon was 2026-05-31 23:15 UTC
        ("America/St_Johns", "2026-06-01 14:30"),  # NDT -2:30
    ],
)
def test_per_zone_offsets(tz: str, expected: str) -> None:
    assert Schedule.parse("0 12 * * *", tz).next_after(z("2026-06-01 00:00")) == z(expected)


def test_next_after_is_strict_and_accepts_any_aware_zone() -> None:
    schedule = Schedule.parse("30 3 * * *", TALLINN)
    assert schedule.next_after(z("2026-06-10 00:30")) == z("2026-06-11 00:30")
    assert schedule.next_after(z("2026-06-10 00:29") + timedelta(seconds=59.9)) == z("2026-06-10 00:30")
    local_input = datetime(2026, 6, 10, 3, 29, tzinfo=ZoneInfo(TALLINN))
    assert schedule.next_after(local_input) == z("2026-06-10 00:30")
    assert schedule.iter_after(z("2026-06-10 00:00"), 0) == []


# ------------------------------------------------------------------------ catch-up, interval, overdue


@pytest.mark.parametrize(
    ("expr", "tz", "now", "expected"),
    [
        ("30 3 * * *", TALLINN, "2026-06-10 00:30", "2026-06-10 00:30"),  # at a fire time: itself
        ("30 3 * * *", TALLINN, "2026-06-10 00:29", "2026-06-09 00:30"),
        ("30 3 * * *", TALLINN, "2026-03-29 01:00", "2026-03-29 01:00"),  # the shifted gap run
        ("30 3 * * *", TALLINN, "2026-03-29 00:59", "2026-03-28 01:30"),
        # 01:40 UTC is 03:40 EET on the second pass; 03:30 already fired on the first pass.
        ("30 3 * * *", TALLINN, "2026-10-25 01:40", "2026-10-25 00:30"),
        ("*/15 * * * *", TALLINN, "2026-10-25 01:40", "2026-10-25 00:45"),
        ("*/15 * * * *", TALLINN, "2026-10-25 02:00", "2026-10-25 02:00"),
        ("59 3 * * *", TALLINN, "2026-10-25 01:05", "2026-10-25 00:59"),
        ("0 0 29 2 *", "UTC", "2027-06-01 00:00", "2024-02-29 00:00"),
        ("@weekly", "UTC", "2026-11-28 23:59", "2026-11-22 00:00"),
    ],
)
def test_latest_at_or_before(expr: str, tz: str, now: str, expected: str) -> None:
    assert Schedule.parse(expr, tz).latest_at_or_before(z(now)) == z(expected)


def test_latest_at_or_before_sub_minute() -> None:
    schedule = Schedule.parse("30 3 * * *", "UTC")
    assert schedule.latest_at_or_before(z("2026-06-10 03:29") + timedelta(seconds=59.5)) == z("2026-06-09 03:30")
    assert schedule.latest_at_or_before(z("2026-06-10 03:30") + timedelta(microseconds=1)) == z("2026-06-10 03:30")


@pytest.mark.parametrize(
    ("expr", "tz", "now", "expected"),
    [
        ("30 3 * * *", "UTC", "2026-06-10 12:00", timedelta(days=1)),
        ("30 3 * * *", TALLINN, "2026-03-28 12:00", timedelta(hours=23, minutes=30)),  # to the gap run
        ("30 3 * * *", TALLINN, "2026-03-29 12:00", timedelta(hours=23, minutes=30)),  # 01:00 -> 00:30
        ("30 3 * * *", TALLINN, "2026-10-25 12:00", timedelta(hours=25)),
        ("*/15 * * * *", "UTC", "2026-06-10 12:07", timedelta(minutes=15)),
        ("*/15 * * * *", TALLINN, "2026-10-25 01:30", timedelta(minutes=75)),
        ("@monthly", "UTC", "2027-02-10 00:00", timedelta(days=28)),
    ],
)
def test_interval_hint(expr: str, tz: str, now: str, expected: timedelta) -> None:
    assert Schedule.parse(expr, tz).interval_hint(z(now)) == expected


@pytest.mark.parametrize(
    ("now", "last_success", "since", "expected"),
    [
        # grace 1 h: at 04:00 the fire that must have produced a backup is yesterday's 03:30.
        ("2026-06-10 04:00", "2026-06-09 03:31", None, False),
        ("2026-06-10 04:00", "2026-06-09 03:30", None, False),  # a success exactly at the fire time
        ("2026-06-10 04:00", "2026-06-09 03:29", None, True),
        ("2026-06-10 04:00", None, None, True),
        # at 04:31 today's 03:30 run is more than an hour old.
        ("2026-06-10 04:31", "2026-06-09 03:31", None, True),
        ("2026-06-10 04:31", "2026-06-10 03:30", None, False),
        # a job configured at 10:00 yesterday owes nothing until today's run is past grace.
        ("2026-06-10 04:00", None, "2026-06-09 10:00", False),
        ("2026-06-10 04:31", None, "2026-06-09 10:00", True),
        ("2026-06-10 04:31", None, "2026-06-10 03:30", False),  # a fire exactly at `since` is not owed
    ],
)
def test_is_overdue(now: str, last_success: str | None, since: str | None, expected: bool) -> None:
    schedule = Schedule.parse("30 3 * * *", "UTC")
    result = schedule.is_overdue(
        z(last_success) if last_success else None, z(now), timedelta(hours=1),
        since=z(since) if since else None,
    )
    assert result is expected


def test_is_overdue_refuses_negative_grace() -> None:
    with pytest.raises(ValueError, match="grace"):
        Schedule.parse("@daily", "UTC").is_overdue(None, z("2026-01-01 00:00"), timedelta(minutes=-1))


@pytest.mark.parametrize(
    ("instant", "tz", "expected"),
    [
        ("2026-11-29 01:30", TALLINN, "2026-11-29 03:30 EET (2026-11-29 01:30 UTC)"),
        ("2026-06-29 00:30", TALLINN, "2026-06-29 03:30 EEST (2026-06-29 00:30 UTC)"),
        ("2026-01-01 03:00", NEW_YORK, "2025-12-31 22:00 EST (2026-01-01 03:00 UTC)"),
        ("2026-01-01 03:00", "UTC", "2026-01-01 03:00 UTC (2026-01-01 03:00 UTC)"),
    ],
)
def test_format_local_and_utc(instant: str, tz: str, expected: str) -> None:
    assert format_local_and_utc(z(instant), ZoneInfo(tz)) == expected


# ------------------------------------------------------------------------------------------- systemd

NOW = datetime(2026, 12, 1, tzinfo=UTC)  # when the drop-ins are written: tzdata is read from 2026 on


def calendar(expr: str, tz: str) -> TimerCalendar:
    return systemd_calendar(expr, tz, now=NOW)


@pytest.mark.parametrize(
    ("expr", "tz", "expected"),
    [
        ("30 5 * * *", TALLINN, "*-*-* 05:30:00 Europe/Tallinn"),
        ("0 2 * * 1", "UTC", "Mon *-*-* 02:00:00 UTC"),
        ("@monthly", "UTC", "*-*-01 00:00:00 UTC"),
        ("@yearly", NEW_YORK, "*-01-01 00:00:00 America/New_York"),
        ("@weekly", "UTC", "Sun *-*-* 00:00:00 UTC"),
        ("@hourly", "UTC", "*-*-* *:00:00 UTC"),
        ("*/15 * * * *", "UTC", "*-*-* *:00/15:00 UTC"),
        ("5-59/20 */6 * * *", "UTC", "*-*-* 00/6:05/20:00 UTC"),
        ("0 9-17 * * mon-fri", "UTC", "Mon..Fri *-*-* 09..17:00:00 UTC"),
        ("0 0 * * 0,6", "UTC", "Sat,Sun *-*-* 00:00:00 UTC"),
        ("0 0 * * 5-7", "UTC", "Fri..Sun *-*-* 00:00:00 UTC"),
        ("0 0 */2 * mon", NEW_YORK, "Mon *-*-01..31/2 00:00:00 America/New_York"),  # bounded: the zone changes
        ("0 0 1 */3 *", "UTC", "*-01/3-01 00:00:00 UTC"),
        ("0,20 1,2,3,7 1-3,15 1 *", "UTC", "*-01-01..03,15 01..03,07:00,20:00 UTC"),
        ("0 0 1-31 * fri", "UTC", "*-*-* 00:00:00 UTC"),  # OR with an all-days side: every day
        ("0 0 29 2 *", "UTC", "*-02-29 00:00:00 UTC"),
        # In the hours of Tallinn's changes, but never on a change day: nothing to add.
        ("30 3 * 1-2 *", TALLINN, "*-01,02-* 03:30:00 Europe/Tallinn"),
        ("30 3 1-15 * *", TALLINN, "*-*-01..15 03:30:00 Europe/Tallinn"),
        ("30 3 * * mon", TALLINN, "Mon *-*-* 03:30:00 Europe/Tallinn"),
        ("30 3 * * *", "Asia/Tokyo", "*-*-* 03:30:00 Asia/Tokyo"),
    ],
)
def test_systemd_calendar_plain(expr: str, tz: str, expected: str) -> None:
    assert calendar(expr, tz) == TimerCalendar((expected,))


@pytest.mark.parametrize(
    ("expr", "tz", "expected"),
    [
        # Tallinn skips 03:00-04:00 on the last Sunday of March and runs it twice on the last Sunday of October:
        # no local value names 03:30 on those days.
        ("30 3 * * *", TALLINN, [
            "*-01,02,04..09,11,12-* 03:30:00 Europe/Tallinn",
            "*-03,10-01..24 03:30:00 Europe/Tallinn",
            "Mon..Sat *-03,10-25..31 03:30:00 Europe/Tallinn",
            "Sun *-03-25..31 04:00:00 Europe/Tallinn",  # the end of the spring gap
            "Sun *-10-25..31 03:30:00 Etc/GMT-3",  # the first pass, at EEST's fixed +03:00
        ]),
        # Weekly: only Sundays to split; the spring value is a Sunday one, like the job, so no extra runs.
        ("15 2 * * 0", "Europe/Berlin", [
            "Sun *-01,02,04..09,11,12-* 02:15:00 Europe/Berlin",
            "Sun *-03,10-01..24 02:15:00 Europe/Berlin",
            "Sun *-03-25..31 03:00:00 Europe/Berlin",
            "Sun *-10-25..31 02:15:00 Etc/GMT-2",
        ]),
        # Hourly: 04:00 follows the gap anyway, so spring adds nothing; only 03:00 is split.
        ("0 * * * *", TALLINN, [
            "*-*-* 00..02,04..23:00:00 Europe/Tallinn",
            "*-01,02,04..09,11,12-* 03:00:00 Europe/Tallinn",
            "*-03,10-01..24 03:00:00 Europe/Tallinn",
            "Mon..Sat *-03,10-25..31 03:00:00 Europe/Tallinn",
            "Sun *-10-25..31 03:00:00 Etc/GMT-3",
        ]),
        # US rule: second Sunday of March (02:00-03:00 skipped), first Sunday of November (01:00-02:00 twice).
        ("30 2 * * *", NEW_YORK, [
            "*-01,02,04..12-* 02:30:00 America/New_York",
            "*-03-01..07,15..31 02:30:00 America/New_York",
            "Mon..Sat *-03-08..14 02:30:00 America/New_York",
            "Sun *-03-08..14 03:00:00 America/New_York",
        ]),
        ("30 1 * * *", NEW_YORK, [
            "*-01..10,12-* 01:30:00 America/New_York",
            "Mon..Sat *-11-01..07 01:30:00 America/New_York",
            "*-11-08..31 01:30:00 America/New_York",
            "Sun *-11-01..07 01:30:00 Etc/GMT+4",
        ]),
        # Adelaide is +10:30 before its April change: no Etc/GMT zone has that, so UTC, a day earlier, which
        # for "Sunday 1-7 April" is Saturday 31 March to 6 April.
        ("30 2 * * *", "Australia/Adelaide", [
            "*-01..03,05..09,11,12-* 02:30:00 Australia/Adelaide",
            "Mon..Sat *-04,10-01..07 02:30:00 Australia/Adelaide",
            "*-04,10-08..31 02:30:00 Australia/Adelaide",
            "Sat *-03-31 16:00:00 UTC",
            "Sat *-04-01..06 16:00:00 UTC",
            "Sun *-10-01..07 03:00:00 Australia/Adelaide",
        ]),
        # Chile skips Sunday 00:00-01:00 in September.
        ("30 0 * * *", "America/Santiago", [
            "*-01..08,10..12-* 00:30:00 America/Santiago",
            "*-09-01,09..31 00:30:00 America/Santiago",
            "Mon..Sat *-09-02..08 00:30:00 America/Santiago",
            "Sun *-09-02..08 01:00:00 America/Santiago",
        ]),
        # Chatham skips 02:45-03:45: 03:00 is in a changing hour, so its gap end 03:45 is written at the fixed
        # +13:45 too, in UTC: Saturday 14:00.
        ("0 3 * * *", "Pacific/Chatham", [
            "*-01..03,05..08,10..12-* 03:00:00 Pacific/Chatham",
            "Mon..Sat *-04-01..07 03:00:00 Pacific/Chatham",
            "*-04-08..31 03:00:00 Pacific/Chatham",
            "*-09-01..23,31 03:00:00 Pacific/Chatham",
            "Mon..Sat *-09-24..30 03:00:00 Pacific/Chatham",
            "Sat *-03-31 13:15:00 UTC",
            "Sat *-04-01..06 13:15:00 UTC",
            "Sat *-09-23..29 14:00:00 UTC",
        ]),
        # Steps are bounded in a zone with changes: systemd 252 runs an open "02/2" past 22 into the next day
        # and gives up when that day starts with Chile's gap.
        ("30 */2 * * *", "America/Santiago", [
            "*-*-* 02..22/2:30:00 America/Santiago",
            "*-01..08,10..12-* 00:30:00 America/Santiago",
            "*-09-01,09..31 00:30:00 America/Santiago",
            "Mon..Sat *-09-02..08 00:30:00 America/Santiago",
            "Sun *-09-02..08 01:00:00 America/Santiago",
        ]),
        # Nuuk skips Saturday 23:00-24:00: the gap ends on Sunday, at 00:00.
        ("30 23 * * *", "America/Nuuk", [
            "*-01,02,04..09,11,12-* 23:30:00 America/Nuuk",
            "*-03,10-01..23,31 23:30:00 America/Nuuk",
            "Mon..Fri,Sun *-03,10-24..30 23:30:00 America/Nuuk",
            "Sun *-03-25..31 00:00:00 America/Nuuk",
            "Sat *-10-24..30 23:30:00 Etc/GMT+1",
        ]),
    ],
)
def test_systemd_calendar_rule_shaped_values(expr: str, tz: str, expected: list[str]) -> None:
    result = calendar(expr, tz)
    assert list(result.values) == expected
    assert result.dated_until is None
    assert result.notes[1] == f"{tz}'s clock changes, from tzdata for 2026-2065:"


def test_systemd_calendar_dated_values() -> None:
    """Morocco's changes follow Ramadan, not a weekday rule: dated values for ten years, then plain local ones."""
    result = calendar("30 2 * * *", "Africa/Casablanca")
    assert result.dated_until == 2035
    assert "follow no weekday rule" in result.notes[1] and "2026-2035" in result.notes[1]
    assert "again before 2036" in result.notes[2]
    assert "2036/1-*-* 02:30:00 Africa/Casablanca" in result.values
    assert "2027-03-14 03:00:00 Africa/Casablanca" in result.values  # the gap after Ramadan 2027 ends at 03:00
    assert "2027-02-07 02:30:00 Etc/GMT-1" in result.values  # the first pass before Ramadan 2027
    assert all(re.match(r"(202[6-9]|203[0-5])[-,]", v) or v.startswith("2036/1-") for v in result.values)
    assert calendar("30 12 * * *", "Africa/Casablanca") == TimerCalendar(("*-*-* 12:30:00 Africa/Casablanca",))


def test_systemd_calendar_refuses_day_or() -> None:
    with pytest.raises(ValueError, match=re.escape("'0 0 1,15 * fri'")):
        calendar("0 0 1,15 * fri", "UTC")
    with pytest.raises(ValueError, match="unknown time zone"):
        calendar("@daily", "Nowhere/Land")


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("expr", "tz", "base"),
    [
        ("30 3 * * *", TALLINN, "2026-06-01 00:00"),
        ("30 3 * * *", TALLINN, "2026-10-23 12:00"),  # fall back: both run the first 03:30 only
        ("*/15 * * * *", TALLINN, "2026-10-25 00:20"),  # both skip the repeated hour
        ("*/15 * * * *", TALLINN, "2026-03-29 00:20"),  # both collapse the gap into 04:00
        ("0 * * * *", NEW_YORK, "2026-11-01 03:30"),
        ("0 2 * * 1", "UTC", "2026-11-28 00:00"),
        ("@monthly", "UTC", "2026-11-28 00:00"),
        ("0 0 31 * *", "Asia/Kolkata", "2026-01-01 00:00"),
        ("0 0 29 2 *", "UTC", "2026-03-01 00:00"),
        ("0 0 */2 * mon", NEW_YORK, "2026-03-01 00:00"),
        ("5-59/20 */6 * * sat,sun", "Australia/Lord_Howe", "2026-04-03 00:00"),
        ("*/20 1 * * *", "Australia/Lord_Howe", "2026-04-03 12:00"),  # half-hour fall back
        ("0,20 1,2,3,7 1-3,15 1 *", "UTC", "2026-01-01 00:00"),
        # A fixed time in the spring gap runs at its end, as in the daemon.
        ("30 3 * * *", TALLINN, "2026-03-27 12:00"),
        ("30 2 * * *", NEW_YORK, "2026-03-06 12:00"),
        ("*/20 2 * * *", "Australia/Lord_Howe", "2026-10-03 12:00"),  # 02:00 and 02:20 run at 02:30
        # systemd counting from the second pass of the repeated hour (a run RandomizedDelaySec pushed there, a
        # timer started there) must not run the repeated times again, as a single local value would.
        ("*/15 * * * *", TALLINN, "2026-10-25 01:10"),
        ("50 3 * * *", TALLINN, "2026-10-25 01:02"),
        ("30 1 * * *", NEW_YORK, "2026-11-01 06:10"),
        ("*/10 1 * * *", "Australia/Lord_Howe", "2026-04-04 15:05"),  # 01:35 LHST, the second half hour
    ],
)
def test_systemd_agrees_with_schedule(expr: str, tz: str, base: str) -> None:
    count = 5
    assert systemd_elapses(calendar(expr, tz).values, z(base), count) == Schedule.parse(expr, tz).iter_after(
        z(base), count
    )


# Zones with their DST rules: EU (last Sundays of March and October), US, southern hemisphere (Sydney,
# Auckland), Chile's changes at local midnight, Morocco's dated ones; UTC and Tokyo have none.
PARITY_ZONES = [TALLINN, "Europe/Berlin", NEW_YORK, "Australia/Sydney", "Pacific/Auckland", "America/Santiago",
                "Africa/Casablanca", "UTC", "Asia/Tokyo"]
# In a gap (daily, weekly), in Berlin's repeated hour (02:30), hourly, every two hours, and a normal time.
PARITY_SCHEDULES = ["30 3 * * *", "15 2 * * *", "15 2 * * 0", "30 2 * * *", "0 * * * *", "30 */2 * * *",
                    "0 12 * * *"]


@needs_systemd_analyze
@pytest.mark.parametrize("year", [2027, 2030])
@pytest.mark.parametrize("tz", PARITY_ZONES)
def test_timer_fires_at_the_daemons_instants(tz: str, year: int) -> None:
    """Around each of the zone's changes in ``year`` (values written in 2026, so rule-shaped ones must still
    hold), systemd, merging all of a timer's values, elapses exactly at Schedule's fire times, which are
    what `backupd next` prints: from two days before each change to a day after it."""
    changes = _transitions(tz, (datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)))
    if tz in ("UTC", "Asia/Tokyo"):
        assert changes == []
        changes = [datetime(year, 3, 28, 1, tzinfo=UTC), datetime(year, 10, 31, 1, tzinfo=UTC)]
    else:
        assert len(changes) >= 2
    cases = []
    for change in changes:
        base, end = change - timedelta(days=2), change + timedelta(days=1)
        for expr in PARITY_SCHEDULES:
            fires = Schedule.parse(expr, tz).iter_after(base, 100)
            cases.append((expr, base, fires[: 1 + sum(t <= end for t in fires)]))  # and the first one after

    def systemd(case: tuple[str, datetime, list[datetime]]) -> list[datetime]:
        expr, base, ours = case
        return systemd_elapses(calendar(expr, tz).values, base, len(ours))

    with ThreadPoolExecutor(max_workers=4) as pool:  # systemd-analyze forks per elapse: run a few at once
        for (expr, base, ours), theirs in zip(cases, pool.map(systemd, cases), strict=True):
            assert theirs == ours, (expr, tz, base)


# -------------------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]


def _field(lo: int, hi: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[Field]:
    """Standard cron syntax for one field, paired with the set it denotes (computed here, not by croniter)."""
    value = st.integers(lo, hi)

    def show(v: int, named: bool) -> str:
        return names[v % len(names)] if named and names else str(v)

    star = st.just(Field("*", frozenset(range(lo, hi + 1))))
    single = st.tuples(value, st.booleans()).map(lambda t: Field(show(t[0], t[1]), frozenset({t[0]})))
    many = st.lists(value, min_size=2, max_size=4, unique=True).map(
        lambda vs: Field(",".join(map(str, vs)), frozenset(vs))
    )
    span = st.tuples(value, value).map(sorted).map(
        lambda ab: Field(f"{ab[0]}-{ab[1]}", frozenset(range(ab[0], ab[1] + 1)))
    )
    step = st.integers(2, max(2, (hi - lo) // 2)).map(
        lambda k: Field(f"*/{k}", frozenset(range(lo, hi + 1, k)))
    )
    span_step = st.tuples(value, value, st.integers(1, 12)).map(
        lambda t: Field(f"{min(t[:2])}-{max(t[:2])}/{t[2]}", frozenset(range(min(t[:2]), max(t[:2]) + 1, t[2])))
    )
    open_step = st.tuples(value, st.integers(1, 30)).map(
        lambda t: Field(f"{t[0]}/{t[1]}", frozenset(range(t[0], hi + 1, t[1])))
    )
    return st.one_of(star, single, many, span, step, span_step, open_step)


_MONTH_NAMES = ("", "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Expr:
    minute: Field
    hour: Field
    dom: Field
    month: Field
    dow: Field

    @property
    def text(self) -> str:
        return " ".join(f.text for f in (self.minute, self.hour, self.dom, self.month, self.dow))

    def day_matches(self, day: date) -> bool:
        in_dom = day.day in self.dom.values
        in_dow = (day.weekday() + 1) % 7 in {d % 7 for d in self.dow.values}
        if self.dom.text.startswith("*") or self.dow.text.startswith("*"):
            return in_dom and in_dow
        return in_dom or in_dow

    def matches(self, wall: datetime) -> bool:
        return (wall.minute in self.minute.values and wall.hour in self.hour.values
                and wall.month in self.month.values and self.day_matches(wall.date()))


def _mostly_star(inner: st.SearchStrategy[Field], lo: int, hi: int) -> st.SearchStrategy[Field]:
    """Day and month fields are '*' half the time, so DST nights are not filtered away."""
    return st.one_of(st.just(Field("*", frozenset(range(lo, hi + 1)))), inner)


# Hours around the DST changes of ZONES (local 23:00-03:59), listed, so fires land on DST nights.
_DST_HOURS = st.lists(st.sampled_from([23, 0, 1, 2, 3]), min_size=1, max_size=3, unique=True).map(
    lambda hs: Field(",".join(map(str, hs)), frozenset(hs))
)
EXPRS = st.builds(
    Expr,
    _field(0, 59),
    st.one_of(_field(0, 23), _DST_HOURS),
    _mostly_star(_field(1, 31), 1, 31),
    _mostly_star(_field(1, 12, _MONTH_NAMES), 1, 12),
    _mostly_star(_field(0, 7, _DAY_NAMES), 0, 7),
)
_STAR_DAYS = (Field("*", frozenset(range(1, 32))), Field("*", frozenset(range(1, 13))),
              Field("*", frozenset(range(8))))
# Every day, in the hours where DST changes happen: each example crosses the change it starts near.
DST_EXPRS = st.builds(Expr, _field(0, 59), _DST_HOURS, *(st.just(f) for f in _STAR_DAYS))
# Half-hour DST (Lord Howe), +12:45/+13:45 (Chatham), midnight transitions (Sao Paulo until 2019).
ZONES = ["UTC", TALLINN, NEW_YORK, "Australia/Lord_Howe", "Pacific/Chatham", "America/Sao_Paulo"]
SPAN = (datetime(2016, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))


@functools.cache
def _transitions(tz: str, span: tuple[datetime, datetime] = SPAN) -> list[datetime]:
    """UTC instants where the zone's offset changes within ``span`` (scan every 6 h, then bisect to the minute)."""
    zone = ZoneInfo(tz)
    found: list[datetime] = []
    t = span[0]
    while t < span[1]:
        u = t + timedelta(hours=6)
        if t.astimezone(zone).utcoffset() != u.astimezone(zone).utcoffset():
            lo, hi = t, u
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            found.append(hi.replace(second=0, microsecond=0))
        t = u
    return found


@st.composite
def _starts(draw: st.DrawFn, tz: str, near_dst: bool) -> datetime:
    """Anywhere in SPAN, or (for DST_EXPRS) in the 3 hours before one of the zone's offset changes."""
    transitions = _transitions(tz)
    if near_dst and transitions:
        edge = draw(st.sampled_from(transitions))
        return edge - timedelta(seconds=draw(st.integers(0, 3 * 3600)))
    seconds = int((SPAN[1] - SPAN[0]).total_seconds())
    return SPAN[0] + timedelta(seconds=draw(st.integers(0, seconds)))


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _oracle_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """Rules 4 and 5 restated by brute force: first occurrence, or the first minute whose wall time is later."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(first, zone) == wall:
        return first
    t = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # an instant before the jump
    while _wall(t, zone) <= wall:
        t += timedelta(minutes=1)
    return t


def _expected_fires(expr: Expr, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Every matching wall-clock minute between the two instants, mapped by the oracle, sorted and unique."""
    fires: set[datetime] = set()
    day = _wall(after, zone).date() - timedelta(days=1)
    last = _wall(until, zone).date() + timedelta(days=1)
    while day <= last:
        if day.month in expr.month.values and expr.day_matches(day):
            for h in expr.hour.values:
                for m in expr.minute.values:
                    instant = _oracle_instant(datetime(day.year, day.month, day.day, h, m), zone)
                    if after < instant <= until:
                        fires.add(instant)
        day += timedelta(days=1)
    return sorted(fires)


def _never_fires(expr: Expr) -> bool:
    """With day-of-week restricted by AND or not at all, only (month, day) pairs decide."""
    longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
    return not any(d <= longest.get(m, 31) for m in expr.month.values for d in expr.dom.values) and (
        expr.dom.text.startswith("*") or expr.dow.text.startswith("*")
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), near_dst=st.booleans(), tz=st.sampled_from(ZONES))
def test_fire_times_follow_the_rules(data: st.DataObject, near_dst: bool, tz: str) -> None:
    """Half the examples are general expressions at random instants, half cross a DST change."""
    zone = ZoneInfo(tz)
    expr = data.draw(DST_EXPRS if near_dst else EXPRS)
    try:
        schedule = Schedule.parse(expr.text, tz)
    except ValueError as exc:
        assert "never fires" in str(exc) and _never_fires(expr), expr.text
        return
    assert not _never_fires(expr)
    after = data.draw(_starts(tz, near_dst))
    fires = schedule.iter_after(after, 12)

    # Strictly increasing, all after the start, all UTC.
    assert all(a < b for a, b in zip([after, *fires], fires, strict=False)), fires
    assert all(f.tzinfo is UTC for f in fires)
    # Each fire matches in local time, unless it is the end of a spring-forward gap that a match fell in.
    for fire in fires:
        if not expr.matches(_wall(fire, zone)):
            gap_start = _wall(fire - timedelta(minutes=1), zone) + timedelta(minutes=1)
            minutes = int((_wall(fire, zone) - gap_start).total_seconds() // 60)
            gap = [gap_start + timedelta(minutes=i) for i in range(minutes)]
            assert gap and any(expr.matches(w) for w in gap), (expr.text, tz, fire)
    # Nothing between consecutive fires was skipped, and nothing extra fired.
    assert fires == _expected_fires(expr, zone, after, fires[-1]), (expr.text, tz, after)
    # latest_at_or_before agrees with next_after at and just before each fire.
    for prev, fire in zip([None, *fires], fires, strict=False):
        assert schedule.latest_at_or_before(fire) == fire
        if prev is not None:
            assert schedule.latest_at_or_before(fire - timedelta(microseconds=1)) == prev
