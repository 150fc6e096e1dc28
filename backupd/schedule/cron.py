"""Cron expressions: the grammar (rules 1 and 2) and `Schedule`, whose fire times croniter finds in wall-clock
time and `zones` maps to instants (rules 3 to 5; see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from backupd.schedule.zones import _to_instant, _utc, _zone

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_LONGEST_MONTH = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
_ITEM = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?")
# croniter stops looking for a match after this many years; Feb 29 on a given weekday needs 28.
_MAX_YEARS = 50
# Guard against an endless loop if croniter and the zone mapping ever disagree.
_MAX_SKIPS = 100_000


@dataclass(frozen=True)
class _Fields:
    """The sets an expression denotes.

    Parsed here, not by croniter: croniter 7 reads ``5-5`` as every minute and ``7-7/3`` as 0,3,...,57,
    so it is only ever handed explicit lists.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_or: bool

    def cron(self) -> str:
        sets = (self.minutes, self.hours, self.days, self.months, self.weekdays)
        full = (60, 24, 31, 12, 7)
        return " ".join(
            "*" if len(v) == n else ",".join(map(str, sorted(v))) for v, n in zip(sets, full, strict=True)
        )


@dataclass(frozen=True)
class Schedule:
    """A validated cron expression bound to an IANA zone; all methods take and return aware datetimes."""

    expr: str
    tz: str
    zone: ZoneInfo
    _fields: _Fields = field(repr=False)
    _cron: str = field(repr=False)

    @classmethod
    def parse(cls, expr: str, tz: str) -> Schedule:
        """Validate ``expr`` and ``tz``; raise ValueError with a one-line message naming the problem."""
        fields = _parse(expr)
        return cls(expr=expr, tz=tz, zone=_zone(tz), _fields=fields, _cron=fields.cron())

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after``, as an aware UTC datetime."""
        return next(self._fires_after(_utc(after, "after")))

    def iter_after(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times strictly after ``after``, strictly increasing, in UTC."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        fires = self._fires_after(_utc(after, "after"))
        return [next(fires) for _ in range(count)]

    def latest_at_or_before(self, now: datetime) -> datetime | None:
        """The most recent fire time <= ``now`` (UTC), or None if croniter finds none within 50 years.

        Scans forward from the last matching wall time <= now's wall time, because on a fall-back night
        wall times after now's (second-pass) wall time may already have fired during the first pass.
        """
        now_utc = _utc(now, "now")
        wall = now_utc.astimezone(self.zone).replace(tzinfo=None)
        try:
            start = croniter(
                self._cron, wall + timedelta(microseconds=1), ret_type=datetime,
                day_or=self._fields.day_or, max_years_between_matches=_MAX_YEARS,
            ).get_prev()
        except CroniterBadDateError:
            return None
        best = _to_instant(start, self.zone)
        walls = self._walls(start)
        for _ in range(_MAX_SKIPS):
            fire = _to_instant(next(walls), self.zone)
            if fire > now_utc:
                return best
            best = fire
        raise RuntimeError(f"schedule {self.expr!r}: no progress scanning fire times near {now_utc}")

    def interval_hint(self, now: datetime) -> timedelta:
        """The gap between the fire times on either side of ``now`` (the next two if none has passed).

        Around DST changes this is the real gap (23 h or 25 h for a daily job), which is what an
        "overdue" grace derived from it should use.
        """
        nxt = self.next_after(now)
        prev = self.latest_at_or_before(now)
        if prev is None:
            return self.next_after(nxt) - nxt
        return nxt - prev

    def is_overdue(
        self, last_success: datetime | None, now: datetime, grace: timedelta,
        since: datetime | None = None,
    ) -> bool:
        """Whether a backup that should exist by now is missing.

        Let ``due`` be the latest fire time <= ``now - grace`` (and > ``since`` when given, e.g. when the
        job was first configured). Overdue means ``due`` exists and there is no success at or after it:
        ``last_success`` is None or ``last_success < due``. A job that never succeeded is overdue once any
        counted fire time is more than ``grace`` old; with no such fire time nothing is overdue.
        """
        if grace < timedelta(0):
            raise ValueError(f"grace must be >= 0, got {grace}")
        due = self.latest_at_or_before(_utc(now, "now") - grace)
        if due is None or (since is not None and due <= _utc(since, "since")):
            return False
        return last_success is None or _utc(last_success, "last_success") < due

    def _walls(self, start: datetime) -> Iterator[datetime]:
        """Naive local wall times matching the expression, strictly after naive ``start``."""
        it = croniter(
            self._cron, start, ret_type=datetime, day_or=self._fields.day_or,
            max_years_between_matches=_MAX_YEARS,
        )
        while True:
            yield it.get_next()

    def _fires_after(self, after_utc: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after_utc``, deduplicated (rules 4 and 5).

        The wall-time -> instant map is non-decreasing, so starting at after's wall time misses nothing;
        on a fall-back night's second pass the first-pass wall times map before ``after`` and are skipped.
        """
        wall = after_utc.astimezone(self.zone).replace(tzinfo=None)
        last = after_utc
        skipped = 0
        for candidate in self._walls(wall):
            fire = _to_instant(candidate, self.zone)
            if fire > last:
                skipped = 0
                last = fire
                yield fire
            else:
                skipped += 1
                if skipped > _MAX_SKIPS:
                    raise RuntimeError(f"schedule {self.expr!r}: no progress after {last}")


def _parse(expr: str) -> _Fields:
    """Parse rules 1 and 2 into sets; raise ValueError naming the expression and the offending field."""
    text = expr.strip()
    if not text:
        raise ValueError("empty cron expression")
    if text.startswith("@"):
        macro = _MACROS.get(text.lower())
        if macro is None:
            raise ValueError(f"unsupported cron macro {text!r}; use one of {' '.join(_MACROS)}")
        text = macro
    raw = text.split()
    if len(raw) != 5:
        raise ValueError(
            f"cron expression {expr!r} has {len(raw)} field{'' if len(raw) == 1 else 's'}; "
            "expected 5 (minute hour day-of-month month day-of-week)"
        )
    minutes, hours, days, months, weekdays = (_parse_field(expr, i, f) for i, f in enumerate(raw))
    weekdays = frozenset(d % 7 for d in weekdays)
    day_or = not raw[2].startswith("*") and not raw[4].startswith("*")
    if day_or and (len(days) == 31 or len(weekdays) == 7):  # one side matches every day, so the OR does
        days, weekdays, day_or = frozenset(range(1, 32)), frozenset(range(7)), False
    if not day_or and not any(d <= _LONGEST_MONTH.get(m, 31) for m in months for d in days):
        raise ValueError(f"cron expression {expr!r} never fires")
    return _Fields(minutes, hours, days, months, weekdays, day_or)


def _parse_field(expr: str, index: int, text: str) -> frozenset[int]:
    """One field: a list of ``*``, ``n`` or ``a-b``, each with an optional ``/k`` (``n/k`` is ``n-max/k``)."""
    lo, hi = _BOUNDS[index]

    def bad(reason: str) -> ValueError:
        return ValueError(f"cron expression {expr!r}: bad {_FIELD_NAMES[index]} field {text!r} ({reason})")

    def number(token: str) -> int:
        names = _MONTHS if index == 3 else _DAYS if index == 4 else ()
        if token in names:
            return names.index(token) + (1 if index == 3 else 0)
        if not token.isdigit():
            raise bad(f"{token!r} is not a number" + (" or name" if names else ""))
        if not lo <= int(token) <= hi:
            raise bad(f"{token} is outside {lo}-{hi}")
        return int(token)

    values: set[int] = set()
    for item in text.lower().split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise bad("use numbers, names, * , - / only")
        star, first, last, step = match.groups()
        if star:
            start, end = lo, hi
        else:
            start = number(first)
            end = number(last) if last is not None else hi if step is not None else start
        if start > end:
            raise bad(f"range {item!r} runs backwards")
        stride = 1 if step is None else int(step)
        if stride < 1:
            raise bad("step must be at least 1")
        values.update(range(start, end + 1, stride))
    return frozenset(values)

