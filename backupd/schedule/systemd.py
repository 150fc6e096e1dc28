"""Timer mode: a cron expression as the systemd ``OnCalendar=`` values that fire at the daemon's instants, DST
change days included (rule 6 of the package docstring).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from backupd.schedule.calendar_dates import _DAY, _HOUR, _MINUTE, _component, _Dates, _Inexpressible
from backupd.schedule.changes import RULE_YEARS, _Change, _dated, _rules
from backupd.schedule.cron import Schedule

# ... and, when they follow none, dated OnCalendar= lines cover this many years.
DATED_YEARS = 10


@dataclass(frozen=True)
class TimerCalendar:
    """The ``OnCalendar=`` values that make one systemd timer fire at a ``Schedule``'s instants.

    ``notes`` are comment lines for the drop-in. ``dated_until`` is set when some values are dated because the
    zone's clock changes follow no rule: they cover changes up to the end of that year, so the drop-in must be
    written again before then.
    """

    values: tuple[str, ...]
    notes: tuple[str, ...] = ()
    dated_until: int | None = None


def systemd_calendar(expr: str, tz: str, *, now: datetime | None = None) -> TimerCalendar:
    """The ``OnCalendar=`` values of a systemd timer firing at exactly ``Schedule.parse(expr, tz)``'s instants.

    A timer fires at the earliest next elapse of any of its values, so the values together must name each fire
    time once and nothing else. Left to itself, systemd (252) differs from rules 4 and 5 on DST change days:
    it skips a local time in a spring-forward gap; it resolves a repeated local time by the UTC offset in force
    at the instant it counts from (a timer counts from its last trigger), so a timer whose last run fell in the
    second pass, as ``RandomizedDelaySec=`` can make it, runs the repeated times again; and it may give up on
    a value altogether ("Resource deadlock avoided") when its search meets a gap, e.g. an open step such as
    ``02/2`` running past midnight into Chile's 00:00-01:00 gap. So the values never make systemd evaluate a
    local time that is skipped or repeated:

    - the expression in ``tz``, except that a time whose hour overlaps a change is left out on that change's
      days (``*-03,10-01..24 03:30:00 Europe/Tallinn``, ``Mon..Sat *-03,10-25..31 ...``); steps are bounded
      (``00..22/2``) in a zone with changes;
    - on those days, those times at the instants the daemon fires them, in a fixed-offset zone (``Etc/GMT-3``
      for +03:00, UTC when the offset is not whole hours): the first occurrence of a repeated time
      (``Sun *-10-25..31 03:30:00 Etc/GMT-3``), the end of the gap for a skipped one (in ``tz`` when that end
      is outside the changing hours: ``Sun *-03-25..31 04:00:00 Europe/Tallinn``), and times before or after
      the change in a changing hour (Chatham's 02:45 change) at the offset before or after it.

    Expressions with no time in a changing hour on a change day get their single plain value. The change days
    come from tzdata (``zoneinfo``): the changes of the RULE_YEARS years from ``now``'s year (default: the
    current time) are grouped by month, wall times and offsets; a group with one change every year, always on
    weekday W within days d..d+6 of month M (the Nth or last weekday of the month) or always on one date,
    becomes a rule-shaped date (``Sun *-03-25..31``) that does not run out. A zone with any other change
    (Morocco's and Palestine's follow Ramadan, or a zone that drops DST within the window) gets dated values
    for the DATED_YEARS years from ``now`` instead, and plain local values after them; ``notes`` says so and
    ``dated_until`` is the last year covered: ``backupd systemd-units`` warns, and must be run again before
    that year ends. Either way the values hold only while tzdata's rules do: run it again after a tzdata
    update that changes the zone.

    Raises ValueError naming ``expr`` when both day fields are restricted: cron ORs them, OnCalendar ANDs
    weekday and day.
    """
    schedule = Schedule.parse(expr, tz)
    fields = schedule._fields
    if fields.day_or:
        raise ValueError(
            f"cron expression {expr!r} matches day-of-month OR day-of-week; "
            "systemd OnCalendar cannot express that (split it into two jobs or timers)"
        )
    cron = _Dates(fields.months, fields.days, frozenset((d - 1) % 7 for d in fields.weekdays))
    times = frozenset((h, m) for h in fields.hours for m in fields.minutes)
    first = (now or datetime.now(UTC)).astimezone(UTC).year
    why = "Together these values fire at the daemon's instants on DST change days too (docs/operations.md: Timer mode)."
    rules = _rules(tz, first)
    if rules is not None:
        try:
            values, special = _values(cron, times, tz, rules, None)
        except _Inexpressible:
            pass
        else:
            if not special:
                return TimerCalendar(tuple(values))
            found = f"{tz}'s clock changes, from tzdata for {first}-{first + RULE_YEARS - 1}:"
            return TimerCalendar(tuple(values), (why, found, *(f"  {r.describe()}" for r in rules)))
    horizon = range(first, first + DATED_YEARS)
    values, special = _values(cron, times, tz, _dated(tz, horizon), horizon)
    if not special:
        return TimerCalendar(tuple(values))
    last = horizon[-1]
    return TimerCalendar(tuple(values), (
        why,
        f"{tz}'s clock changes follow no weekday rule: the values for them are dated and cover {first}-{last}.",
        f"Run `backupd systemd-units` again before {last + 1}.",
    ), last)


def _values(cron: _Dates, times: frozenset[tuple[int, int]], tz: str, changes: list[_Change],
            horizon: range | None) -> tuple[list[str], bool]:
    """The values for ``changes`` (rule-shaped when ``horizon`` is None, else dated within it); and whether any
    value exists because of a change.

    systemd 252 walks a value's candidates hour by hour (it visits HH:00:00 of each candidate hour), and a
    candidate that does not exist or occurs twice makes it skip, repeat or give up ("Resource deadlock
    avoided"). So no local value covers an hour that overlaps a change on its change days: there, the
    hour's times are written at the fixed offset they fire at (before the change, after it, or the end of a
    gap for a skipped time); and step components are bounded (``00..22/2``), so a step never runs past the
    end of the day into a change.
    """
    bounded = bool(changes)
    where: dict[frozenset[tuple[int, int]], set[tuple[int, int]]] = {}
    for h, m in times:
        hour = timedelta(hours=h)
        key = frozenset(
            (i, k) for i, c in enumerate(changes) for k in (0, 1)
            if c.start < k * _DAY + hour + _HOUR and k * _DAY + hour < c.end
            and any(d & cron for d in c.dates.shift(k))
        )
        where.setdefault(key, set()).add((h, m))
    values = _lines([cron], where.pop(frozenset(), set()), tz, bounded=bounded)
    fixed: list[str] = []
    for key, group in sorted(where.items(), key=lambda kv: min(kv[1])):
        keep = [cron if horizon is None else replace(cron, years=frozenset(horizon))]
        for i, k in sorted(key):
            for changed in changes[i].dates.shift(k):
                keep = [piece for dates in keep for piece in dates - changed]
        keep = sorted(_merged(keep), key=lambda d: (min(d.years or {0}), min(d.months), min(d.days)))
        if horizon is not None:
            keep.append(replace(cron, since=horizon.stop))
        values += _lines(keep, group, tz, bounded=bounded)
        for i, k in sorted(key):
            for changed in changes[i].dates.shift(k):
                on = changed & cron
                if on is not None:
                    fixed += _on_change_days(changes[i], k, on, group, times, tz)
    return list(dict.fromkeys(values + fixed)), bool(where)


def _on_change_days(change: _Change, k: int, on: _Dates, group: Iterable[tuple[int, int]],
                    times: frozenset[tuple[int, int]], tz: str) -> list[str]:
    """Values for ``group``'s times on the dates ``on`` (``k`` days after the change's), at the instants the
    daemon fires them: the offset before the change, the first occurrence of a repeated time, the end of the
    gap for a skipped one, the offset after the change. Each is written in a fixed-offset zone, except the end
    of a gap that is not in a changing hour (``04:00`` after Tallinn's 03:00-04:00 gap), which stays local."""
    end_hour = change.end // _HOUR * _HOUR
    end_is_local = not (change.start < end_hour + _HOUR and end_hour < change.end)
    end_days, end = divmod(change.end, _DAY)
    at: dict[tuple[str, int, int], set[tuple[int, int]]] = {}
    for h, m in group:
        wall = k * _DAY + timedelta(hours=h, minutes=m)  # from the change day's midnight
        skipped = change.gap and change.start <= wall < change.end
        before = wall < change.start or (not change.gap and wall < change.end)
        zone, delta = _fixed_zone(change.before if before else change.after)
        if skipped:
            wall = change.end
            if end_is_local:
                if end_days == k and not end % _MINUTE and divmod(end // _MINUTE, 60) in times:
                    continue  # a local value fires at the end of the gap already
                zone, delta = tz, timedelta(0)
        clock = wall - k * _DAY - delta  # from midnight of the dates in `on`, on `zone`'s clock
        seconds = int((clock % _MINUTE).total_seconds())
        at.setdefault((zone, clock // _DAY, seconds), set()).add(divmod(clock % _DAY // _MINUTE, 60))
    return [
        value
        for (zone, days, seconds), walls in sorted(at.items(), key=lambda kv: (kv[0][0] == tz, kv[0]))
        for value in _lines(on.shift(days), walls, zone, seconds)
    ]


def _merged(pieces: list[_Dates]) -> list[_Dates]:
    """Disjoint products, with any two that differ in one component only joined (``*-03,10-01..24``)."""
    pieces = list(pieces)
    joined = True
    while joined:
        joined = False
        for a, b in itertools.combinations(pieces, 2):
            differ = [n for n in ("months", "days", "weekdays", "years") if getattr(a, n) != getattr(b, n)]
            if len(differ) == 1 and (differ[0] != "years" or None not in (a.years, b.years)):
                name = differ[0]
                pieces.remove(a)
                pieces.remove(b)
                pieces.append(replace(a, **{name: getattr(a, name) | getattr(b, name)}))
                joined = True
                break
    return pieces


def _lines(dates: Iterable[_Dates], times: Iterable[tuple[int, int]], zone: str, second: int = 0, *,
           bounded: bool = False) -> list[str]:
    """One value per date product and per hours x minutes product that covers ``times``."""
    by_hour: dict[int, set[int]] = {}
    for h, m in times:
        by_hour.setdefault(h, set()).add(m)
    by_minutes: dict[frozenset[int], set[int]] = {}
    for h, ms in by_hour.items():
        by_minutes.setdefault(frozenset(ms), set()).add(h)
    products = sorted(((hs, ms) for ms, hs in by_minutes.items()), key=lambda p: min(p[0]))
    return [
        f"{d.render(bounded)} {_component(hs, 0, 23, bounded=bounded)}:{_component(ms, 0, 59, bounded=bounded)}"
        f":{second:02d} {zone}"
        for d in dates for hs, ms in products
    ]


def _fixed_zone(offset: timedelta) -> tuple[str, timedelta]:
    """A zone whose clock is always at ``offset`` or UTC, and what to subtract from walls at ``offset`` for it."""
    hours, rest = divmod(offset, _HOUR)
    if not rest and -12 <= hours <= 14:
        return ("UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"), timedelta(0)
    return "UTC", offset

