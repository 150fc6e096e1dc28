"""The date algebra of OnCalendar lines: products of years, months, days and weekdays, intersected, subtracted,
shifted by a day and rendered (``Sun *-10-25..31``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta

_SYSTEMD_DAYS = {1: "Mon", 2: "Tue", 3: "Wed", 4: "Thu", 5: "Fri", 6: "Sat", 7: "Sun"}
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_MONTH_DAYS = {1: 31, 2: 0, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}  # 0: varies
_ALL_WEEKDAYS = frozenset(range(7))


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
