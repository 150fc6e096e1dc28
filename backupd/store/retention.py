"""Retention policy: which backups to keep and which to delete, with a human reason for every decision.

Pure: no I/O, no clock. The caller passes ``now`` and the job's time zone; the store, catalog and S3
code act on the returned decisions.

The failure this module exists to prevent: backups fail for days, then a count or age rule deletes the
good ones. So only backups that are *committed and verified* count toward the policy, and only they can
be deleted by it. Everything else is kept and says why.

Semantics (like restic's ``forget``):

- ``keep_last N`` keeps the N newest counted backups.
- ``keep_hourly/daily/weekly/monthly/yearly N``: counted backups are put in buckets by their time in the
  job's zone (local hour, local date, ISO week, month, year); the newest backup of each bucket is kept,
  for the N most recent buckets that contain a counted backup. Empty buckets (days with no good backup)
  do not use up a slot, so a week of failures costs nothing but that week.
- A backup kept by several rules lists every reason.
- During a DST fall-back the repeated local hour is two hourly buckets (two real hours of data); its
  reason shows the UTC offset, e.g. ``hourly 2026-11-01 01:00 (UTC-05:00)``.

Decisions for the backups the policy does not count:

- uncommitted or unverified: never counted, never deleted ("unverified: not counted, kept"). They are
  flagged, not cleaned up, because a backup whose verification failed is the evidence an operator needs
  and may be the only copy of something; deleting it is a human decision. Stale ``.partial`` directories
  are the store's business, not retention's.
- dated after ``now`` (a clock that was wrong when it ran): never counted, kept, so one bogus timestamp
  cannot take a slot from real backups.

Safety rules, applied after the policy made its choice, whatever that choice was:

1. the newest committed+verified backup is never deleted ("newest verified");
2. a backup that should be in S3 and is not there yet is never deleted ("not yet in S3");
3. nothing is deleted unless at least one verified backup is kept;
4. an empty policy (every count 0) means *keep everything*, never *delete everything*.

Worked example (also a unit test): 30 backups at 00:30 Europe/Berlin, 2026-10-29 .. 2026-11-27, with
keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6 keeps 10 and deletes 20:

- 11-27: last 3, daily 2026-11-27, weekly 2026-W48, monthly 2026-11, newest verified
- 11-26, 11-25: last 3, daily;  11-24, 11-23: daily
- 11-22, 11-21: daily; 11-22 is also weekly 2026-W47 (Mon 11-16 .. Sun 11-22)
- 11-15: weekly 2026-W46;  11-08: weekly 2026-W45;  10-31: monthly 2026-10
- everything else: not selected by policy (only two months have backups, so monthly stops at 10-31)

In UTC those backups are at 23:30 the day before, which is why buckets are computed in the job's zone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from zoneinfo import ZoneInfo

__all__ = ["Backup", "Decision", "Policy", "plan"]

DELETE_REASON = "not selected by policy"
EMPTY_POLICY = "empty policy: keep all"
NEWEST_VERIFIED = "newest verified"
NOT_IN_S3 = "not yet in S3"
UNCOMMITTED = "uncommitted: not counted, kept"
UNVERIFIED = "unverified: not counted, kept"
FUTURE = "dated after now: not counted, kept"
NO_VERIFIED_LEFT = "safety: no verified backup would remain"


@dataclass(frozen=True)
class Policy:
    """How many backups to keep per rule; 0 disables a rule. All zero means keep everything."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{f.name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")

    def is_empty(self) -> bool:
        """True when no rule is enabled; `plan` then keeps everything (safe default, not delete-all)."""
        return not any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Backup:
    """What retention needs to know about one backup; `time` must be timezone-aware (UTC by convention)."""

    backup_id: str
    time: datetime
    committed: bool
    verified: bool
    needs_s3: bool
    in_s3: bool

    def __post_init__(self) -> None:
        if self.time.utcoffset() is None:
            raise ValueError(f"backup {self.backup_id}: time must be timezone-aware, got {self.time!r}")

    @property
    def counted(self) -> bool:
        """Committed and verified: the only backups a policy counts and may delete."""
        return self.committed and self.verified


@dataclass(frozen=True)
class Decision:
    """Keep or delete one backup; `reasons` is never empty so every outcome can be explained."""

    backup_id: str
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    """One bucket rule: `key` groups local times into buckets, `label` names a bucket for humans."""

    count: int
    key: Callable[[datetime], Hashable]
    label: Callable[[datetime], str]


def _hour_label(t: datetime) -> str:
    base = f"hourly {t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:00"  # strftime is 3x slower
    other = t.replace(fold=1 - t.fold)
    offset = t.utcoffset()
    if offset is not None and other.utcoffset() != offset:  # a repeated wall-clock hour: say which one
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        return f"{base} (UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"
    return base


def _week_label(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"weekly {year}-W{week:02d}"


def _rules(policy: Policy) -> list[_Rule]:
    return [
        _Rule(policy.keep_hourly, lambda t: (t.date(), t.hour, t.utcoffset()), _hour_label),
        _Rule(policy.keep_daily, lambda t: t.date(), lambda t: f"daily {t.year:04d}-{t.month:02d}-{t.day:02d}"),
        _Rule(policy.keep_weekly, lambda t: t.isocalendar()[:2], _week_label),
        _Rule(policy.keep_monthly, lambda t: (t.year, t.month), lambda t: f"monthly {t.year:04d}-{t.month:02d}"),
        _Rule(policy.keep_yearly, lambda t: t.year, lambda t: f"yearly {t.year:04d}"),
    ]


_order_key: Callable[[Backup], tuple[datetime, str]] = attrgetter("time", "backup_id")  # C-speed sort key


def _select(counted: Sequence[Backup], policy: Policy, zone: ZoneInfo) -> dict[str, list[str]]:
    """The policy's choice over counted backups (newest first): backup_id -> reasons. O(n).

    Buckets are tracked in sets rather than by comparing with the previous key, so a zone whose local
    date or hour steps backwards still gets each bucket counted once, for its newest backup.
    """
    if policy.is_empty():
        return {b.backup_id: [EMPTY_POLICY] for b in counted}
    chosen: dict[str, list[str]] = {}
    last = policy.keep_last
    rules = [r for r in _rules(policy) if r.count > 0]
    left = [r.count for r in rules]
    seen: list[set[Hashable]] = [set() for _ in rules]
    active = len(rules)  # rules with slots left
    for i, b in enumerate(counted):
        if i >= last and not active:
            break  # every rule is satisfied: the rest are not selected
        reasons: list[str] = []
        if i < last:
            reasons.append(f"last {last}")
        if active:
            local = b.time.astimezone(zone)
            for j, rule in enumerate(rules):
                if left[j] == 0:
                    continue
                key = rule.key(local)
                if key in seen[j]:
                    continue
                seen[j].add(key)
                left[j] -= 1
                active -= left[j] == 0
                reasons.append(rule.label(local))
        if reasons:
            chosen[b.backup_id] = reasons
    return chosen


def _decide(ordered: Sequence[Backup], chosen: dict[str, list[str]], now: datetime) -> list[Decision]:
    """The policy's choice as decisions: chosen or not counted => keep, anything else => delete."""
    decisions: list[Decision] = []
    for b in ordered:
        reasons = list(chosen.get(b.backup_id, ()))
        if not b.committed:
            reasons.append(UNCOMMITTED)
        elif not b.verified:
            reasons.append(UNVERIFIED)
        elif b.time > now:
            reasons.append(FUTURE)
        keep = bool(reasons)
        decisions.append(Decision(b.backup_id, keep, tuple(reasons) if keep else (DELETE_REASON,)))
    return decisions


def _enforce(ordered: Sequence[Backup], decisions: Sequence[Decision]) -> list[Decision]:
    """Apply the safety rules to `decisions` (aligned with `ordered`), whatever the policy chose.

    Separate from the selection so a bug there cannot delete what must stay, and so tests can feed
    it wrong decisions on purpose. Rule 3 runs first: with no verified backup kept, nothing is deleted.
    """
    out = list(decisions)
    if any(not d.keep for d in out) and not any(b.counted and d.keep for b, d in zip(ordered, out, strict=True)):
        out = [d if d.keep else Decision(d.backup_id, True, (NO_VERIFIED_LEFT,)) for d in out]
    newest = next((b.backup_id for b in ordered if b.counted), None)
    for i, (b, d) in enumerate(zip(ordered, out, strict=True)):
        extra = []
        if b.backup_id == newest:
            extra.append(NEWEST_VERIFIED)
        if b.needs_s3 and not b.in_s3:
            extra.append(NOT_IN_S3)
        if extra:
            out[i] = Decision(d.backup_id, True, (d.reasons if d.keep else ()) + tuple(extra))
    return out


def plan(backups: Iterable[Backup], policy: Policy, now: datetime, tz: ZoneInfo | str) -> list[Decision]:
    """Decide keep/delete for every backup of one job, newest first; O(n log n), independent of input order.

    `now` must be aware; `tz` is the job's zone (a name raises ZoneInfoNotFoundError if unknown).
    Raises ValueError on duplicate backup ids, since one id cannot get two decisions.
    """
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    ordered = sorted(backups, key=_order_key, reverse=True)
    if len({b.backup_id for b in ordered}) != len(ordered):
        raise ValueError("duplicate backup_id in retention input")
    counted = [b for b in ordered if b.counted and b.time <= now]
    return _enforce(ordered, _decide(ordered, _select(counted, policy, zone), now))
