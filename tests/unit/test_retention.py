"""Retention: hand-computed examples, then the safety invariants over random histories (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.store.retention import Backup, Decision, Policy, _enforce, plan

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def good(backup_id: str, time: datetime, *, needs_s3: bool = False, in_s3: bool = False) -> Backup:
    return Backup(backup_id, time, committed=True, verified=True, needs_s3=needs_s3, in_s3=in_s3)


def failed(backup_id: str, time: datetime, *, committed: bool = True, verified: bool = False) -> Backup:
    return Backup(backup_id, time, committed=committed, verified=verified, needs_s3=False, in_s3=False)


def local(zone: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    """A wall-clock time in `zone`, converted to UTC the way the catalog stores it."""
    return datetime(y, mo, d, h, mi, s, tzinfo=zone).astimezone(UTC)


def by_id(decisions: Sequence[Decision]) -> dict[str, Decision]:
    return {d.backup_id: d for d in decisions}


def kept(decisions: Sequence[Decision]) -> set[str]:
    return {d.backup_id for d in decisions if d.keep}


# --- Policy -----------------------------------------------------------------------------------------


def test_policy_rejects_negative_and_non_int() -> None:
    with pytest.raises(ValueError, match="keep_daily"):
        Policy(keep_daily=-1)
    with pytest.raises(TypeError):
        Policy(keep_last=True)
    with pytest.raises(TypeError):
        Policy(keep_last=1.5)  # type: ignore[arg-type]


def test_policy_is_empty() -> None:
    assert Policy().is_empty()
    assert not Policy(keep_yearly=1).is_empty()
    assert not Policy(keep_last=1).is_empty()


# --- hand-computed examples -------------------------------------------------------------------------


def test_worked_example_30_daily_backups_in_berlin() -> None:
    """The example quoted in the module docstring: 00:30 local is 23:30 UTC the day before."""
    start = datetime(2026, 10, 29)
    backups = []
    for i in range(30):
        day = start + timedelta(days=i)
        backups.append(good(f"{day:%m-%d}", local(BERLIN, day.year, day.month, day.day, 0, 30)))
    policy = Policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6)
    decisions = plan(backups, policy, now=datetime(2026, 11, 28, tzinfo=UTC), tz="Europe/Berlin")

    assert [d.backup_id for d in decisions] == [b.backup_id for b in reversed(backups)]
    expected = {
        "11-27": ("last 3", "daily 2026-11-27", "weekly 2026-W48", "monthly 2026-11", "newest verified"),
        "11-26": ("last 3", "daily 2026-11-26"),
        "11-25": ("last 3", "daily 2026-11-25"),
        "11-24": ("daily 2026-11-24",),
        "11-23": ("daily 2026-11-23",),
        "11-22": ("daily 2026-11-22", "weekly 2026-W47"),
        "11-21": ("daily 2026-11-21",),
        "11-15": ("weekly 2026-W46",),
        "11-08": ("weekly 2026-W45",),
        "10-31": ("monthly 2026-10",),
    }
    got = by_id(decisions)
    assert {k: got[k].reasons for k in kept(decisions)} == expected
    deleted = [d for d in decisions if not d.keep]
    assert len(deleted) == 20
    assert all(d.reasons == ("not selected by policy",) for d in deleted)


def test_daily_bucket_edges_at_local_midnight() -> None:
    """23:00 and 23:59:59 are the same New York day, 00:00 the next; all three are 27 Nov in UTC."""
    backups = [
        good("a", local(NEW_YORK, 2026, 11, 26, 23, 0)),
        good("b", local(NEW_YORK, 2026, 11, 26, 23, 59, 59)),
        good("c", local(NEW_YORK, 2026, 11, 27, 0, 0)),
    ]
    decisions = plan(backups, Policy(keep_daily=2), now=datetime(2026, 12, 1, tzinfo=UTC), tz=NEW_YORK)
    assert kept(decisions) == {"b", "c"}
    assert by_id(decisions)["b"].reasons == ("daily 2026-11-26",)
    assert by_id(decisions)["a"].reasons == ("not selected by policy",)


def test_weekly_uses_iso_weeks_in_local_time() -> None:
    """Monday 00:30 in Berlin is Sunday in UTC: it opens ISO week 48 locally."""
    backups = [
        good("sun", local(BERLIN, 2026, 11, 22, 12, 0)),  # Sunday, W47
        good("mon", local(BERLIN, 2026, 11, 23, 0, 30)),  # Monday, W48
    ]
    decisions = plan(backups, Policy(keep_weekly=2), now=datetime(2026, 12, 1, tzinfo=UTC), tz=BERLIN)
    assert by_id(decisions)["mon"].reasons[0] == "weekly 2026-W48"
    assert by_id(decisions)["sun"].reasons == ("weekly 2026-W47",)


def test_iso_week_year_differs_from_calendar_year() -> None:
    """2027-01-01 (a Friday) belongs to ISO week 2026-W53, the same bucket as 2026-12-28."""
    backups = [good("dec28", local(BERLIN, 2026, 12, 28, 12)), good("jan1", local(BERLIN, 2027, 1, 1, 12))]
    decisions = plan(backups, Policy(keep_weekly=5), now=datetime(2027, 2, 1, tzinfo=UTC), tz=BERLIN)
    assert kept(decisions) == {"jan1"}
    assert by_id(decisions)["jan1"].reasons[0] == "weekly 2026-W53"


def test_dst_fall_back_repeated_hour_is_two_hourly_buckets() -> None:
    """New York, 1 Nov 2026: 01:00-02:00 happens twice (EDT then EST); each real hour is a bucket."""
    start = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    backups = [good(f"{i:02d}", start + timedelta(minutes=30 * i)) for i in range(9)]  # to 08:00 UTC
    decisions = plan(backups, Policy(keep_hourly=10), now=start + timedelta(days=1), tz=NEW_YORK)
    got = by_id(decisions)
    assert kept(decisions) == {"01", "03", "05", "07", "08"}
    assert got["08"].reasons[0] == "hourly 2026-11-01 03:00"
    assert got["07"].reasons == ("hourly 2026-11-01 02:00",)
    assert got["05"].reasons == ("hourly 2026-11-01 01:00 (UTC-05:00)",)
    assert got["03"].reasons == ("hourly 2026-11-01 01:00 (UTC-04:00)",)
    assert got["01"].reasons == ("hourly 2026-11-01 00:00",)


def test_dst_days_are_one_daily_bucket_each() -> None:
    """The 25-hour and 23-hour days are still one local day each."""
    backups = [
        good("fall-early", local(NEW_YORK, 2026, 11, 1, 0, 30)),
        good("fall-late", local(NEW_YORK, 2026, 11, 1, 23, 30)),
        good("spring-early", local(NEW_YORK, 2026, 3, 8, 0, 30)),
        good("spring-late", local(NEW_YORK, 2026, 3, 8, 23, 30)),
        good("before", local(NEW_YORK, 2026, 3, 7, 23, 30)),
    ]
    decisions = plan(backups, Policy(keep_daily=3), now=datetime(2026, 12, 1, tzinfo=UTC), tz=NEW_YORK)
    assert kept(decisions) == {"fall-late", "spring-late", "before"}


def test_santiago_midnight_fall_back() -> None:
    """Chile turns 24:00 back to 23:00: Saturday 23:xx happens twice, Sunday starts once."""
    santiago = ZoneInfo("America/Santiago")
    backups = [
        good("sat-2300-first", datetime(2026, 4, 5, 2, 30, tzinfo=UTC)),  # 23:30 -03
        good("sat-2300-second", datetime(2026, 4, 5, 3, 30, tzinfo=UTC)),  # 23:30 -04
        good("sun", datetime(2026, 4, 5, 4, 30, tzinfo=UTC)),  # 00:30 -04
    ]
    now = datetime(2026, 5, 1, tzinfo=UTC)
    daily = plan(backups, Policy(keep_daily=5), now=now, tz=santiago)
    assert kept(daily) == {"sat-2300-second", "sun"}
    hourly = plan(backups, Policy(keep_hourly=5), now=now, tz=santiago)
    assert kept(hourly) == {"sat-2300-first", "sat-2300-second", "sun"}


def test_keep_last_and_yearly() -> None:
    backups = [good(f"y{y}", datetime(y, 6, 1, tzinfo=UTC)) for y in range(2020, 2027)]
    decisions = plan(backups, Policy(keep_last=1, keep_yearly=3), now=datetime(2027, 1, 1, tzinfo=UTC), tz="UTC")
    assert kept(decisions) == {"y2026", "y2025", "y2024"}
    assert by_id(decisions)["y2026"].reasons == ("last 1", "yearly 2026", "newest verified")


# --- the failure this module prevents ---------------------------------------------------------------


def test_days_of_failed_runs_do_not_use_up_slots() -> None:
    """Ten good days, then ten days of unverified runs: the good ones the policy picked stay."""
    day0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    history = [good(f"g{i:02d}", day0 + timedelta(days=i)) for i in range(10)]
    failures = [failed(f"f{i:02d}", day0 + timedelta(days=10 + i)) for i in range(10)]
    policy = Policy(keep_last=3, keep_daily=3)
    now = day0 + timedelta(days=21)
    decisions = plan(history + failures, policy, now=now, tz="UTC")
    assert kept(decisions) == {"g09", "g08", "g07"} | {b.backup_id for b in failures}
    assert by_id(decisions)["f05"].reasons == ("unverified: not counted, kept",)
    assert by_id(decisions)["g09"].reasons == ("last 3", "daily 2026-11-10", "newest verified")


def test_uncommitted_kept_and_flagged() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    backups = [
        good("old", t),
        good("new", t + timedelta(days=1)),
        failed("partial", t + timedelta(days=2), committed=False),
    ]
    decisions = plan(backups, Policy(keep_last=1), now=t + timedelta(days=3), tz="UTC")
    assert by_id(decisions)["partial"].reasons == ("uncommitted: not counted, kept",)
    assert kept(decisions) == {"partial", "new"}


def test_empty_policy_keeps_everything() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    backups = [good(f"b{i}", t + timedelta(hours=i)) for i in range(5)]
    decisions = plan(backups, Policy(), now=t + timedelta(days=1), tz="UTC")
    assert all(d.keep for d in decisions)
    assert by_id(decisions)["b0"].reasons == ("empty policy: keep all",)


def test_not_yet_in_s3_is_kept() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    backups = [
        good("pending", t, needs_s3=True, in_s3=False),
        good("shipped", t + timedelta(hours=1), needs_s3=True, in_s3=True),
        good("local-only", t + timedelta(hours=2)),
        good("newest", t + timedelta(hours=3)),
    ]
    decisions = plan(backups, Policy(keep_last=1), now=t + timedelta(days=1), tz="UTC")
    assert kept(decisions) == {"newest", "pending"}
    assert by_id(decisions)["pending"].reasons == ("not yet in S3",)


def test_future_dated_backup_takes_no_slot() -> None:
    """A backup stamped by a clock set years ahead must not push a real one out of keep_last."""
    t = datetime(2026, 11, 1, tzinfo=UTC)
    backups = [
        good("real-old", t),
        good("real-new", t + timedelta(hours=1)),
        good("bogus", datetime(2030, 1, 1, tzinfo=UTC)),
    ]
    decisions = plan(backups, Policy(keep_last=1), now=t + timedelta(days=1), tz="UTC")
    assert kept(decisions) == {"real-new", "bogus"}
    assert by_id(decisions)["bogus"].reasons == ("dated after now: not counted, kept", "newest verified")


def test_safety_rules_override_a_wrong_choice() -> None:
    """`_enforce` is the defensive layer: fed decisions that delete what must stay, it keeps them."""
    t = datetime(2026, 11, 1, tzinfo=UTC)
    ordered = [
        good("newest", t + timedelta(hours=3)),
        good("pending", t + timedelta(hours=2), needs_s3=True),
        good("plain", t + timedelta(hours=1)),
        good("oldest", t),
    ]
    wrong = [Decision(b.backup_id, b.backup_id == "oldest", ("x",)) for b in ordered]
    decisions = by_id(_enforce(ordered, wrong))
    assert decisions["newest"] == Decision("newest", True, ("newest verified",))
    assert decisions["pending"] == Decision("pending", True, ("not yet in S3",))
    assert decisions["plain"] == Decision("plain", False, ("x",))
    assert decisions["oldest"] == Decision("oldest", True, ("x",))


def test_nothing_deleted_when_no_verified_backup_would_be_kept() -> None:
    """A choice that deletes every verified backup is refused as a whole, not patched one by one."""
    t = datetime(2026, 11, 1, tzinfo=UTC)
    ordered = [
        good("new", t + timedelta(hours=2)),
        failed("unverified", t + timedelta(hours=1)),
        good("old", t),
    ]
    wrong = [
        Decision("new", False, ("x",)),
        Decision("unverified", True, ("x",)),
        Decision("old", False, ("x",)),
    ]
    decisions = by_id(_enforce(ordered, wrong))
    assert decisions["old"] == Decision("old", True, ("safety: no verified backup would remain",))
    assert decisions["new"].keep


def test_input_validation() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        good("naive", datetime(2026, 11, 1))
    with pytest.raises(ValueError, match="aware"):
        plan([good("a", t)], Policy(keep_last=1), now=datetime(2026, 11, 2), tz="UTC")
    with pytest.raises(ValueError, match="duplicate"):
        plan(
            [good("a", t), good("a", t + timedelta(hours=1))],
            Policy(keep_last=1),
            now=t + timedelta(days=1),
            tz="UTC",
        )


def test_tz_name_and_zoneinfo_agree() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    backups = [good(f"b{i}", t + timedelta(hours=7 * i)) for i in range(20)]
    policy = Policy(keep_daily=3, keep_hourly=2)
    now = t + timedelta(days=10)
    assert plan(backups, policy, now, "Asia/Kolkata") == plan(backups, policy, now, ZoneInfo("Asia/Kolkata"))


# --- properties over random histories ---------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
]
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_MINUTES = 2 * 366 * 24 * 60


def _transitions() -> list[int]:
    """Minutes since EPOCH of every UTC-offset change in ZONES over the two years (the DST edges)."""
    found: set[int] = set()
    for name in ZONES:
        zone = ZoneInfo(name)
        previous = EPOCH.astimezone(zone).utcoffset()
        for hour in range(0, SPAN_MINUTES // 60, 1):
            offset = (EPOCH + timedelta(hours=hour)).astimezone(zone).utcoffset()
            if offset != previous:
                found.add(hour * 60)
                previous = offset
    return sorted(found)


TRANSITIONS = _transitions()

minutes = st.one_of(
    st.integers(0, SPAN_MINUTES),  # anywhere in two years
    st.builds(lambda t, d: max(0, t + d), st.sampled_from(TRANSITIONS), st.integers(-600, 600)),  # near DST
    st.builds(
        lambda c, d: max(0, c + d),
        st.integers(0, SPAN_MINUTES).map(lambda m: m - m % 43200),
        st.integers(0, 20000),
    ),
)


@st.composite
def backups(draw: st.DrawFn, prefix: str = "b", max_size: int = 40) -> list[Backup]:
    times = draw(st.lists(minutes, max_size=max_size))
    result = []
    for i, m in enumerate(times):
        flags = draw(st.tuples(*[st.booleans()] * 4))
        result.append(Backup(f"{prefix}{i:03d}", EPOCH + timedelta(minutes=m), *flags))
    return result


policies = st.one_of(
    st.just(Policy()),
    st.builds(Policy, *[st.integers(0, 6)] * 6),
)


@st.composite
def nows(draw: st.DrawFn, history: list[Backup]) -> datetime:
    """Usually after every backup; sometimes in the middle of the history (clock set back)."""
    latest = max((b.time for b in history), default=EPOCH)
    if draw(st.integers(0, 9)) == 0:
        return EPOCH + timedelta(minutes=draw(st.integers(0, SPAN_MINUTES)))
    return latest + timedelta(minutes=draw(st.integers(0, 60 * 24 * 30)))


def oracle(history: list[Backup], policy: Policy, now: datetime, zone: ZoneInfo) -> set[str]:
    """Independent model of what the policy itself selects: group into buckets, rank buckets by newest."""
    counted = [b for b in history if b.committed and b.verified and b.time <= now]
    order: Callable[[Backup], tuple[datetime, str]] = lambda b: (b.time, b.backup_id)  # noqa: E731
    counted.sort(key=order, reverse=True)
    if policy.is_empty():
        return {b.backup_id for b in counted}
    selected = {b.backup_id for b in counted[: policy.keep_last]}
    rules: list[tuple[int, Callable[[datetime], Hashable]]] = [
        (policy.keep_hourly, lambda t: (t.strftime("%Y-%m-%d %H"), t.utcoffset())),
        (policy.keep_daily, lambda t: t.strftime("%Y-%m-%d")),
        (policy.keep_weekly, lambda t: t.strftime("%G-%V")),
        (policy.keep_monthly, lambda t: t.strftime("%Y-%m")),
        (policy.keep_yearly, lambda t: t.year),
    ]
    for count, key in rules:
        groups: dict[Hashable, list[Backup]] = {}
        for b in counted:
            groups.setdefault(key(b.time.astimezone(zone)), []).append(b)
        newest = sorted((max(g, key=order) for g in groups.values()), key=order, reverse=True)
        selected |= {b.backup_id for b in newest[:count]}
    return selected


def newest_verified(history: list[Backup]) -> Backup | None:
    counted = [b for b in history if b.committed and b.verified]
    return max(counted, key=lambda b: (b.time, b.backup_id), default=None)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Backup], Policy, datetime, ZoneInfo]:
    history = draw(backups())
    return history, draw(policies), draw(nows(history)), ZoneInfo(draw(st.sampled_from(ZONES)))


PROPS = settings(max_examples=150, deadline=None)


@PROPS
@given(cases())
def test_matches_independent_model(case: tuple[list[Backup], Policy, datetime, ZoneInfo]) -> None:
    """Exact spec: kept <=> selected by the model, or protected by one of the safety rules."""
    history, policy, now, zone = case
    decisions = by_id(plan(history, policy, now, zone))
    selected = oracle(history, policy, now, zone)
    newest = newest_verified(history)
    for b in history:
        protected = (
            not (b.committed and b.verified)
            or b.time > now
            or (b.needs_s3 and not b.in_s3)
            or (newest is not None and b.backup_id == newest.backup_id)
        )
        assert decisions[b.backup_id].keep == (b.backup_id in selected or protected), b


@PROPS
@given(cases())
def test_invariants_1_2_3_5(case: tuple[list[Backup], Policy, datetime, ZoneInfo]) -> None:
    history, policy, now, zone = case
    decisions = plan(history, policy, now, zone)
    got = by_id(decisions)
    # 5: one decision per backup, each with a reason, newest first
    assert len(decisions) == len(history) == len(got)
    assert set(got) == {b.backup_id for b in history}
    assert all(d.reasons for d in decisions)
    times = {b.backup_id: b.time for b in history}
    assert [times[d.backup_id] for d in decisions] == sorted(times.values(), reverse=True)
    # 1: the newest verified backup is never deleted
    newest = newest_verified(history)
    if newest is not None:
        assert got[newest.backup_id].keep
    # 2: not yet in S3 => kept
    assert all(got[b.backup_id].keep for b in history if b.needs_s3 and not b.in_s3)
    # 3: deletes only while a verified backup is kept; empty policy deletes nothing
    deleted = [b for b in history if not got[b.backup_id].keep]
    if deleted:
        assert any(got[b.backup_id].keep for b in history if b.committed and b.verified)
        assert not policy.is_empty()
    # only counted backups are ever deleted, and their reason says so
    assert all(b.committed and b.verified for b in deleted)
    assert all(got[b.backup_id].reasons == ("not selected by policy",) for b in deleted)


@PROPS
@given(cases(), backups(prefix="x", max_size=20))
def test_invariant_4_unverified_runs_never_use_a_slot(
    case: tuple[list[Backup], Policy, datetime, ZoneInfo], extra: list[Backup]
) -> None:
    history, policy, now, zone = case
    failed = [  # a random mix of unverified and uncommitted runs, never both flags true
        Backup(b.backup_id, b.time, b.committed, b.verified and not b.committed, b.needs_s3, b.in_s3) for b in extra
    ]
    before = by_id(plan(history, policy, now, zone))
    after = by_id(plan(history + failed, policy, now, zone))
    for b in history:
        assert after[b.backup_id] == before[b.backup_id]
    assert all(after[b.backup_id].keep for b in failed)


@PROPS
@given(cases(), st.randoms(use_true_random=False))
def test_invariant_6_input_order_does_not_matter(
    case: tuple[list[Backup], Policy, datetime, ZoneInfo], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    history, policy, now, zone = case
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert plan(shuffled, policy, now, zone) == plan(history, policy, now, zone)
