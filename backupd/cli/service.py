"""The scheduler's side: next, status, daemon, systemd-units (each with the function adding its arguments)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd.cli.common import (
    Subparsers,
    command,
    events_for,
    load,
    print_json,
    print_table,
)
from backupd.errors import EXIT_FAILED, EXIT_OK, UsageError
from backupd.humanize import human_age


@command("next")
def cmd_next(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from backupd.daemon.scheduler import upcoming
    from backupd.schedule import format_local_and_utc

    config = load(args)
    if args.job:
        config.job(args.job)
    if not 1 <= args.count <= 1000:
        raise UsageError(f"next: --count must be 1..1000, got {args.count}")
    after = datetime.now(UTC)
    if args.after:
        try:
            after = datetime.fromisoformat(args.after)
        except ValueError:
            raise UsageError(f"next: --after {args.after!r} is not an ISO 8601 time (e.g. 2026-03-29T01:00)") from None
        if after.tzinfo is None:  # a naive time is read in the scheduler's zone, like the schedules
            after = after.replace(tzinfo=ZoneInfo(config.settings.scheduler.timezone))
    rows = upcoming(config, args.job, args.count, after)
    if not rows:
        print("no enabled jobs")
    for r in rows:
        label = f"{r['job']}" + (" (drill)" if r["kind"] == "drill" else "")
        print(f"{label}: {r['schedule']} [{r['timezone']}]" + ("" if r["enabled"] else " disabled"))
        for t in r["times"]:
            print(f"  {format_local_and_utc(t, r['zone'])}")
    return EXIT_OK


def add_next(sub: Subparsers) -> None:
    s = sub.add_parser("next", help="upcoming fire times")
    s.add_argument("job", nargs="?")
    s.add_argument("--count", type=int, default=5)
    s.add_argument("--after", metavar="ISO8601")


def _when(value: str | None) -> str:
    return value.replace("T", " ").replace("Z", " UTC") if value else "-"


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    from backupd.daemon.status import all_status, notify_status

    config = load(args)
    if args.notify:  # timer mode's notification checks and outbox retries (backupd-notify.timer)
        from backupd.daemon.watch import check_all

        check_all(config, events_for(config))
    statuses = all_status(config, reconcile=True)
    if args.html:
        _write_html(config, Path(args.html), statuses)
    jobs = [s.to_json() for s in statuses]
    outbox = notify_status(config)
    overdue = [j["job"] for j in jobs if j["overdue"]]
    if args.json:
        print_json(jobs)
    elif not jobs:
        print("no jobs configured")
    else:
        rows = []
        for j in jobs:
            last = j["last_run_outcome"] or "never"
            if j["running"]:
                last += " (running)"
            drill = f"{j['last_drill_outcome']} {_when(j['last_drill_at'])}" if j["last_drill_outcome"] else "-"
            rows.append([
                j["job"], _when(j["last_success_at"]), human_age(j["last_success_age_seconds"]),
                "OVERDUE" if j["overdue"] else ("disabled" if not j["enabled"] else "no"), last,
                _when(j["next_run"]), drill,
            ])
        print_table(["JOB", "LAST GOOD BACKUP", "AGE", "OVERDUE", "LAST RUN", "NEXT RUN", "LAST DRILL"], rows)
        for j in jobs:
            if j["last_run_outcome"] == "failed" and j["last_run_error"]:
                print(f"{j['job']}: last run failed: {j['last_run_error']}")
            if j["oldest_proven_at"]:
                n = j["s3_read_cycles"]
                cycles = f"; S3 copies all re-read every {n} verifications" if n else ""
                failures = sum(j["verify_failures"].values())
                print(f"{j['job']}: oldest last verified {_when(j['oldest_proven_at'])}"
                      f" ({human_age(j['oldest_unverified_age_seconds'])} ago), next verify {_when(j['next_verify'])}"
                      f"{cycles}" + (f", {failures} failed verification(s)" if failures else ""))
            if j["drill_cycle_seconds"]:
                print(f"{j['job']}: drills restore each of {j['kept_backups']} kept backup(s) once every "
                      f"{human_age(j['drill_cycle_seconds'])}")
            if j["pitr_window_seconds"] is not None:  # restorable to any instant in this window
                span = f"{_when(j['pitr_window_start'])} .. {_when(j['pitr_window_end'])}" if j["pitr_window_start"] \
                    else "none yet (no base backup covered by committed segments)"
                print(f"{j['job']}: pitr window {span} (keeps {human_age(j['pitr_window_seconds'])})")
            for w in j["last_backup_warnings"]:
                print(f"{j['job']}: warning: {w}")
            if j["last_drill_outcome"] == "failed" and j["last_drill_error"]:
                print(f"{j['job']}: last drill failed: {j['last_drill_error']}")
            if j.get("stream"):
                print(_stream_line(j["job"], j["stream"]))
            if j["s3_enabled"]:
                last = _when(j["s3_last_copy_at"])
                owed = f"{j['s3_pending']} pending" if j["s3_pending"] else "in sync"
                print(f"{j['job']}: s3 {owed}, last copy {last}" + (f": {j['s3_error']}" if j["s3_error"] else ""))
        for kind, n in sorted(outbox.undeliverable.items()):
            print(f"notify: {n} message(s) undeliverable via {kind}")
        for line in outbox.recent:
            print(f"notify: undeliverable: {line}")
        for kind, n in sorted(outbox.pending.items()):
            print(f"notify: {n} message(s) waiting for a retry via {kind}")
    if overdue:
        print(f"backupd: overdue: {', '.join(overdue)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _stream_line(job: str, st: dict[str, Any]) -> str:
    """`status`: one line per PITR stream (lag, committed position, gaps)."""
    if st["lag_seconds"] is None:
        return f"{job}: stream never ran (backupd stream {job})"
    pos = st["committed"]
    where = f"committed {pos['file']}:{pos['pos']}" if pos else "nothing committed yet"
    gaps = f", {st['gaps']} gap(s)" if st["gaps"] else ""
    state = "streaming" if st["running"] else "STOPPED"
    owed = st.get("s3_pending")
    s3 = "" if owed is None else (f", {owed} segment(s) pending for s3" if owed else ", segments in s3")
    return f"{job}: stream {state}, lag {human_age(st['lag_seconds'])}, {where}{gaps}{s3}"


def _write_html(config: Any, path: Path, statuses: list[Any]) -> None:
    """`status --html FILE`: the daemon's status page as a file (written whole, then renamed into place)."""
    import socket

    from backupd.daemon.page import render_page
    from backupd.daemon.status import notify_status

    mode = config.settings.http.status_page
    mode = "full" if mode == "off" else mode
    text = render_page(statuses, mode, socket.gethostname(), notify_status(config) if mode == "full" else None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def add_status(sub: Subparsers) -> None:
    s = sub.add_parser("status", help="per job: last good backup, age, overdue, next run")
    s.add_argument("--json", action="store_true")
    s.add_argument("--notify", action="store_true",
                   help="also run the notification checks and retry the outbox (timer mode)")
    s.add_argument("--html", metavar="FILE", help="also write the status page to FILE")


@command("daemon")
def cmd_daemon(args: argparse.Namespace) -> int:
    from backupd.daemon.scheduler import run_daemon

    return run_daemon(load(args))


def add_daemon(sub: Subparsers) -> None:
    sub.add_parser("daemon", help="scheduler + /health + /metrics")


@command("systemd-units")
def cmd_systemd_units(args: argparse.Namespace) -> int:
    from backupd.daemon.systemd_units import dated_timers, timer_names, write_units

    config = load(args)
    out = Path(args.output) if args.output else Path("/etc/systemd/system")
    written = write_units(config, out)
    for path in written:
        print(path)
    for timer, tz, last in dated_timers(config):
        print(
            f"backupd: warning: {timer}: {tz}'s DST changes follow no rule, so its OnCalendar= values for them "
            f"are dated and cover them until {last}; run `backupd systemd-units` again before {last + 1}",
            file=sys.stderr,
        )
    timers = " ".join(timer_names(config))
    print(f"next: systemctl daemon-reload && systemctl enable --now {timers}" if timers else "no enabled jobs")
    return EXIT_OK


def add_systemd_units(sub: Subparsers) -> None:
    s = sub.add_parser("systemd-units", help="write per-job systemd timer units")
    s.add_argument("--output", metavar="DIR")
