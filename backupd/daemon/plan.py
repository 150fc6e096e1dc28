"""The schedule table: one entry per job and kind (backups, drills, re-verification) with its next fire time,
catch-up after a start, a missed fire or a clock jump, and `backupd next`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backupd.daemon.runs import Kind, Runs
from backupd.schedule import Schedule
from backupd.settings import Config

LATE = 60.0  # a fire noticed later than this was missed (suspend, clock step): catch-up rules apply


@dataclass
class Entry:
    """One schedule the daemon follows: a job's backups or its drills."""

    job: str
    kind: Kind
    sched: Schedule
    next_fire: datetime


class Planning(Runs):
    """When runs are due; queued through `Runs` (a part of `Daemon`, which sets `entries`)."""

    entries: dict[tuple[str, Kind], Entry]

    def _build_entries(self, now: datetime) -> None:
        old = self.entries
        self.entries = {}
        for name, job in sorted(self.config.jobs.items()):
            if not job.enabled:
                continue
            tz = self.config.job_timezone(name)
            verify = self.config.settings.scheduler.verify_schedule or None
            exprs: list[tuple[Kind, str | None, str]] = [
                ("backup", job.schedule, tz),
                ("drill", job.drill_schedule, tz),
                ("verify", verify, self.config.settings.scheduler.timezone),  # every job's kept backups re-proven
            ]
            for kind, expr, tz in exprs:
                if not expr:
                    continue
                sched = Schedule.parse(expr, tz)
                prev = old.get((name, kind))
                if prev is not None and prev.sched.expr == expr and prev.sched.tz == tz:
                    self.entries[(name, kind)] = prev
                else:
                    self.entries[(name, kind)] = Entry(name, kind, sched, sched.next_after(now))

    # ------------------------------------------------------------ scheduling

    def _catch_up(self, now: datetime, why: str) -> None:
        """A schedule whose latest fire time has no successful run after it runs once (catchup = "once")."""
        mode = self.config.settings.scheduler.catchup
        for (name, kind), e in self.entries.items():
            if kind == "verify":  # background work: a missed re-verification waits for its next fire time
                continue
            latest = e.sched.latest_at_or_before(now)
            if latest is None:
                continue
            last_ok = self._last_ok(name, kind)
            if last_ok is not None and last_ok >= latest:
                continue
            if mode == "none":
                self.events.event("missed", job=name, kind=kind, fire=latest.isoformat(), reason=why, catchup="none")
                continue
            self._enqueue(name, kind, "catchup", latest, why)

    def _last_ok(self, name: str, kind: Kind) -> datetime | None:
        if kind == "verify":  # any outcome: a verification that found a bad backup still ran
            at = self.catalog.db.execute("SELECT MAX(at) FROM verifications WHERE job=?", (name,)).fetchone()[0]
            return datetime.fromisoformat(at) if at else None
        if kind == "backup":
            row = self.catalog.last_success(name)
        else:
            row = self.catalog.db.execute(
                "SELECT started_at FROM drills WHERE job=? AND outcome='ok' ORDER BY id DESC LIMIT 1", (name,)
            ).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row["started_at"] if kind == "backup" else row[0])

    def _fire_due(self, now: datetime) -> None:
        for e in self.entries.values():
            if e.next_fire > now:
                continue
            fire = e.next_fire
            e.next_fire = e.sched.next_after(now)
            late = (now - fire).total_seconds()
            if late <= LATE:
                self._enqueue(e.job, e.kind, "schedule", fire, "schedule")
            elif self.config.settings.scheduler.catchup == "once":
                self._enqueue(e.job, e.kind, "catchup", fire, f"fire noticed {late:.0f}s late")
            else:
                self.events.event("missed", job=e.job, kind=e.kind, fire=fire.isoformat(), catchup="none")


def upcoming(config: Config, job: str | None, count: int, after: datetime) -> list[dict[str, Any]]:
    """`backupd next`: the next `count` fire times per job (and per drill schedule), UTC datetimes."""
    names = [job] if job else sorted(n for n, j in config.jobs.items() if j.enabled)
    out: list[dict[str, Any]] = []
    for name in names:
        j = config.job(name)
        tz = config.job_timezone(name)
        for kind, expr in (("backup", j.schedule), ("drill", j.drill_schedule)):
            if not expr:
                continue
            sched = Schedule.parse(expr, tz)
            out.append(
                {
                    "job": name,
                    "kind": kind,
                    "schedule": expr,
                    "timezone": tz,
                    "enabled": j.enabled,
                    "zone": sched.zone,
                    "times": sched.iter_after(after, count) if j.enabled else [],
                }
            )
    return out
