"""Cron expressions -> fire times, evaluated in each job's own time zone.

Rules (the README quotes these):

1. Syntax: five fields, ``minute hour day-of-month month day-of-week``, with numbers, ``*``, lists
   (``1,15``), ranges (``1-5``), steps (``*/15``, ``0-30/10``; ``5/15`` means ``5-59/15``), month names
   (``jan``) and day names (``mon``; 0 and 7 are Sunday); or one of ``@hourly @daily @midnight @weekly
   @monthly @yearly @annually``. Rejected: seconds or year fields, ``@reboot``, backwards ranges, and
   non-standard extensions (``L``, ``W``, ``#``, ``?``, ``H``) that neither cron nor systemd timers run.
2. Day matching follows Vixie cron / cronie: when both day fields are restricted (neither starts with
   ``*``), a day matches if EITHER field matches (``0 0 1,15 * fri``: the 1st, the 15th and every Friday);
   otherwise both must match (``0 0 */2 * mon``: Mondays with an odd day number). An expression that can
   never fire (``0 0 30 2 *``) is rejected.
3. Fire times are wall-clock times in the schedule's zone, converted to UTC.
4. Spring forward: a local time skipped by the jump runs once, at the first instant after the jump
   (``30 3 * * *`` in Europe/Tallinn on 2026-03-29 runs at 04:00 EEST = 01:00 UTC). Several skipped times
   collapse into that one run, so ``*/15`` keeps a real 15-minute rhythm; ``30 * * * *`` gets one extra
   run that night (02:30, 04:00, 04:30 local).
5. Fall back: a wall-clock time that occurs twice runs once, at its first occurrence (the earlier UTC
   instant). This holds for step expressions too: the repeated hour is not run twice, so ``*/15`` pauses
   for 75 minutes that night.
6. Timer mode fires at the same instants: ``systemd_calendar`` renders the expression as several
   ``OnCalendar=`` values, rule-shaped ones for the zone's DST change days (derived from tzdata; dated
   ones, which run out, for a zone whose changes follow no weekday rule), so that systemd runs a skipped
   time at the end of the gap and a repeated one once, at its first occurrence, like rules 4 and 5.
   ``tests/unit/test_schedule.py`` checks this against ``systemd-analyze calendar`` around the changes of
   2027 and 2030 in several zones. An expression using the day-of-month OR day-of-week rule is refused
   (OnCalendar can only AND them).

croniter only ever sees explicit value lists and naive wall-clock times; `cron` parses the fields
and `zones` maps wall times to instants. croniter 7 misreads some ranges (``5-5`` is every minute) and, given
aware datetimes, fires repeated fall-back times twice, which breaks rule 5.

The package: `cron` (the grammar and `Schedule`), `zones` (wall times and instants), `changes` (a zone's clock
changes from tzdata), `calendar_dates` (the OnCalendar date algebra) and `systemd` (`systemd_calendar`).
"""

from __future__ import annotations

from backupd.schedule.changes import RULE_YEARS
from backupd.schedule.cron import Schedule
from backupd.schedule.systemd import DATED_YEARS, TimerCalendar, systemd_calendar
from backupd.schedule.zones import format_local_and_utc

__all__ = ["DATED_YEARS", "RULE_YEARS", "Schedule", "TimerCalendar", "format_local_and_utc", "systemd_calendar"]
