"""A zone's clock changes, read from tzdata: scanned to the second, then grouped into yearly rules (``Sun *-03-25..31``)
or, when they follow none, dated changes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from backupd.schedule.calendar_dates import _MINUTE, _Dates
from backupd.schedule.zones import _zone

# A zone's clock changes are read from tzdata for this many years to recognise its rule ...
RULE_YEARS = 40


@dataclass(frozen=True)
class _Change:
    """Clock changes of one kind: on each of ``dates``, the wall clocks ``start`` to ``end`` after midnight are
    skipped (``gap``) or occur twice; ``before`` and ``after`` are the UTC offsets around the change."""

    gap: bool
    dates: _Dates
    start: timedelta
    end: timedelta
    before: timedelta
    after: timedelta

    def describe(self) -> str:
        return (f"{self.dates.render()} {_clock(self.start)}-{_clock(self.end)} "
                f"{'skipped' if self.gap else 'twice, first at UTC' + _signed(self.before)}")



@dataclass(frozen=True)
class _Raw:
    day: date
    gap: bool
    start: timedelta
    end: timedelta
    before: timedelta
    after: timedelta


@functools.lru_cache(maxsize=64)
def _scan(tz: str, first: int) -> tuple[_Raw, ...]:
    """``tz``'s clock changes in the RULE_YEARS years from ``first``: offsets every 6 h, bisected to the second."""
    zone = _zone(tz)
    found = []
    t = datetime(first, 1, 1, tzinfo=UTC)
    stop = datetime(first + RULE_YEARS, 1, 1, tzinfo=UTC)
    offset = _offset(t, zone)
    while t < stop:
        u = t + timedelta(hours=6)
        new = _offset(u, zone)
        if new != offset:
            lo, hi = int(t.timestamp()), int(u.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(datetime.fromtimestamp(mid, UTC), zone) == offset else (lo, mid)
            wall = datetime.fromtimestamp(hi, UTC).replace(tzinfo=None) + min(offset, new)  # first affected
            start = wall - datetime.combine(wall.date(), datetime.min.time())
            found.append(_Raw(wall.date(), new > offset, start, start + abs(new - offset), offset, new))
        t, offset = u, new
    return tuple(found)


def _offset(t: datetime, zone: ZoneInfo) -> timedelta:
    offset = t.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _rules(tz: str, first: int) -> list[_Change] | None:
    """``tz``'s changes as rules (every year, on a fixed date or weekday W on days d..d+6 of a month), or None."""
    groups: dict[tuple[bool, int, timedelta, timedelta, timedelta, timedelta], list[date]] = {}
    for r in _scan(tz, first):
        groups.setdefault((r.gap, r.day.month, r.start, r.end, r.before, r.after), []).append(r.day)
    rules = []
    for (gap, month, start, end, before, after), days in groups.items():
        if sorted(d.year for d in days) != list(range(first, first + RULE_YEARS)):
            return None
        doms = {d.day for d in days}
        weekdays = {d.weekday() for d in days}
        if len(doms) == 1:
            dates = _Dates(frozenset({month}), frozenset(doms))
        elif len(weekdays) == 1 and max(doms) - min(doms) == 6:
            dates = _Dates(frozenset({month}), frozenset(range(min(doms), max(doms) + 1)), frozenset(weekdays))
        else:
            return None
        rules.append(_Change(gap, dates, start, end, before, after))
    return sorted(rules, key=lambda r: (min(r.dates.months), not r.gap))


def _dated(tz: str, years: range) -> list[_Change]:
    """``tz``'s changes in ``years``, one dated change each."""
    return [
        _Change(r.gap, _Dates(frozenset({r.day.month}), frozenset({r.day.day}), years=frozenset({r.day.year})),
                r.start, r.end, r.before, r.after)
        for r in _scan(tz, years.start) if r.day.year in years
    ]

def _clock(t: timedelta) -> str:
    minutes = t // _MINUTE
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _signed(offset: timedelta) -> str:
    minutes = offset // _MINUTE
    return f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

