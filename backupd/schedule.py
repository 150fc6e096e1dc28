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

croniter only ever sees explicit value lists and naive wall-clock times; this module parses the fields
and maps wall times to instants. croniter 7 misreads some ranges (``5-5`` is every minute) and, given
aware datetimes, fires repeated fall-back times twice, which breaks rule 5.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

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


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {tz!r} (expected an IANA name such as Europe/Tallinn)") from None


def _utc(dt: datetime, name: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {dt.isoformat()}")
    return dt.astimezone(UTC)


def _to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a naive local wall time fires at: its first occurrence, or the end of its gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Nonexistent: fold=0 applies the pre-jump offset (an instant after the jump), fold=1 the post-jump
    # offset (an instant before it). Bisect the whole seconds in between for the jump itself.
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(first.timestamp())
    after_jump = first.astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_jump:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def format_local_and_utc(dt: datetime, zone: tzinfo) -> str:
    """``2026-11-29 03:30 EET (2026-11-29 01:30 UTC)``: operators think locally, logs are in UTC."""
    local = _utc(dt, "dt").astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({dt.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"


# ------------------------------------------------------------------------------------------ timer mode

_SYSTEMD_DAYS = {1: "Mon", 2: "Tue", 3: "Wed", 4: "Thu", 5: "Fri", 6: "Sat", 7: "Sun"}
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_MONTH_DAYS = {1: 31, 2: 0, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}  # 0: varies
_ALL_WEEKDAYS = frozenset(range(7))
# A zone's clock changes are read from tzdata for this many years to recognise its rule ...
RULE_YEARS = 40
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


class _Inexpressible(Exception):
    """A rule-shaped line would need a date OnCalendar cannot write (a shift across the end of February)."""


@dataclass(frozen=True)
class _Dates:
    """The local dates one OnCalendar line names: years x months x days of month, on the given weekdays."""

    months: frozenset[int]
    days: frozenset[int]
    weekdays: frozenset[int] = _ALL_WEEKDAYS  # date.weekday(): 0 is Monday
    years: frozenset[int] | None = None  # None: every year
    since: int | None = None  # with years None: this year and later only

    def __and__(self, other: _Dates) -> _Dates | None:
        """The dates in both, or None when no real date is."""
        if self.since is not None or other.since is not None:
            raise AssertionError("open-ended year ranges are never intersected")
        if self.years is None or other.years is None:
            years = self.years if other.years is None else other.years
        else:
            years = self.years & other.years
        both = _Dates(self.months & other.months, self.days & other.days, self.weekdays & other.weekdays, years)
        return both if both._possible() else None

    def __sub__(self, other: _Dates) -> list[_Dates]:
        """The dates in self but not in other, as disjoint products (one per component that differs)."""
        if self & other is None:
            return [self]
        pieces: list[_Dates] = []
        rest = self
        if other.years is not None:
            if self.years is None:
                raise AssertionError("co-finite year sets are never needed")
            if self.years - other.years:
                pieces.append(replace(rest, years=self.years - other.years))
            rest = replace(rest, years=self.years & other.years)
        for name in ("months", "days", "weekdays"):
            mine, theirs = getattr(rest, name), getattr(other, name)
            if mine - theirs:
                pieces.append(replace(rest, **{name: mine - theirs}))
            rest = replace(rest, **{name: mine & theirs})
        return [p for p in pieces if p._possible()]

    def shift(self, days: int) -> list[_Dates]:
        """The dates ``days`` (-1, 0 or 1) later; _Inexpressible if that needs to know whether a year is leap."""
        if days == 0:
            return [self]
        if self.years is not None:
            return [_Dates(frozenset({d.month}), frozenset({d.day}), years=frozenset({d.year}))
                    for d in (d + timedelta(days=days) for d in self._each())]
        moved: dict[int, set[int]] = {}
        for month in self.months:
            for day in self.days:
                if day > (_MONTH_DAYS[month] or 29):
                    continue
                to_month, to_day = month, day + days
                if month == 2 and (day == 29 or to_day > 28):
                    raise _Inexpressible("the shift crosses the end of February")
                if to_day < 1:
                    to_month = 12 if month == 1 else month - 1
                    if not _MONTH_DAYS[to_month]:
                        raise _Inexpressible("the shift crosses the end of February")
                    to_day += _MONTH_DAYS[to_month]
                elif to_day > _MONTH_DAYS[month]:
                    to_month, to_day = 1 if month == 12 else month + 1, to_day - _MONTH_DAYS[month]
                moved.setdefault(to_month, set()).add(to_day)
        weekdays = frozenset((w + days) % 7 for w in self.weekdays)
        return [_Dates(frozenset({m}), frozenset(ds), weekdays) for m, ds in sorted(moved.items())]

    def render(self, bounded: bool = False) -> str:
        """``Sun *-10-25..31``: the weekday and date parts of an OnCalendar value."""
        weekdays = "" if self.weekdays == _ALL_WEEKDAYS else _component({w + 1 for w in self.weekdays}, 1, 7,
                                                                          _SYSTEMD_DAYS) + " "
        years = (f"{self.since}/1" if self.since is not None else
                 "*" if self.years is None else _component(self.years, 0, 9999))
        months = _component(self.months, 1, 12, bounded=bounded)
        return f"{weekdays}{years}-{months}-{_component(self.days, 1, 31, bounded=bounded)}"

    def _each(self) -> Iterator[date]:
        assert self.years is not None
        for year in sorted(self.years):
            for month in sorted(self.months):
                for day in sorted(self.days):
                    try:
                        d = date(year, month, day)
                    except ValueError:
                        continue
                    if d.weekday() in self.weekdays:
                        yield d

    def _possible(self) -> bool:
        if not (self.months and self.days and self.weekdays and self.years != frozenset()):
            return False
        if self.years is not None:
            return next(self._each(), None) is not None
        return any(d <= (_MONTH_DAYS[m] or 29) for m in self.months for d in self.days)


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


def _component(values: Iterable[int], lo: int, hi: int, names: dict[int, str] | None = None, *,
               bounded: bool = False) -> str:
    """Render one OnCalendar component: ``*``, ``start/step`` (``start..last/step`` if ``bounded``) or a list of
    values and ``a..b`` runs."""
    def show(v: int) -> str:
        return names[v] if names else f"{v:02d}"

    ordered = sorted(values)
    if ordered == list(range(lo, hi + 1)):
        return "*"
    if names is None and len(ordered) >= 3:  # "03,10", not "03/7"
        step = ordered[1] - ordered[0]
        if step > 1 and ordered == list(range(ordered[0], hi + 1, step)):
            return f"{show(ordered[0])}{'..' + show(ordered[-1]) if bounded else ''}/{step}"
    parts: list[str] = []
    run: list[int] = []
    for v in [*ordered, None]:
        if v is not None and run and v == run[-1] + 1:
            run.append(v)
            continue
        if len(run) >= 3:
            parts.append(f"{show(run[0])}..{show(run[-1])}")
        else:
            parts.extend(show(r) for r in run)
        run = [] if v is None else [v]
    return ",".join(parts)
