"""Wall-clock times and instants in an IANA zone: a skipped time fires at the end of its gap, a repeated one at
its first occurrence (rules 3 to 5 of the package docstring).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


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
