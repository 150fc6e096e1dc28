"""Setting up: check-config, notify test, and the demo's arguments (its handler runs the CLI itself, so it lives
beside `main` in backupd/cli/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from backupd.cli.common import (
    Subparsers,
    command,
    load,
    print_table,
)
from backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError, UsageError


@command("check-config")
def cmd_check_config(args: argparse.Namespace) -> int:
    from backupd.schedule import Schedule, format_local_and_utc

    config = load(args)
    now = datetime.now(UTC)
    rows = []
    for name, job in sorted(config.jobs.items()):
        sched = Schedule.parse(job.schedule, config.job_timezone(name))
        nxt = format_local_and_utc(sched.next_after(now), sched.zone) if job.enabled else "disabled"
        rows.append([name, job.type, job.schedule, sched.tz, nxt])
    print(f"config {config.path}: ok ({len(config.jobs)} job{'s' if len(config.jobs) != 1 else ''})")
    if rows:
        print_table(["JOB", "TYPE", "SCHEDULE", "TIMEZONE", "NEXT RUN"], rows)
    if args.connect:
        from backupd.actions.check import check_job, identity_warnings

        for w in identity_warnings(config):
            print(f"backupd: warning: {w}", file=sys.stderr)
        failed = 0
        if config.settings.s3.enabled:
            from backupd.actions.check import check_s3

            try:
                print(check_s3(config))
            except BackupdError as exc:
                failed += 1
                print(f"backupd: {exc}", file=sys.stderr)
        for name in sorted(config.jobs):
            try:
                detail = check_job(config, name)
                print(f"{name}: reachable ({detail})")
            except BackupdError as exc:
                failed += 1
                print(f"backupd: {exc}", file=sys.stderr)
            except Exception as exc:  # a driver error or a bug: one line for this job, the others still checked
                failed += 1
                print(f"backupd: job {name}, step connect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_OK
    return EXIT_OK


def add_check_config(sub: Subparsers) -> None:
    s = sub.add_parser("check-config", help="validate the configuration")
    s.add_argument("--connect", action="store_true", help="also check that every source is reachable")


@command("notify")
def cmd_notify(args: argparse.Namespace) -> int:
    from backupd.notify import channels
    from backupd.notify.deliver import send_now
    from backupd.notify.message import Message

    config = load(args)
    if args.notify_cmd != "test":
        raise UsageError("notify: use 'notify test [--job JOB]'")
    if args.job:
        config.job(args.job)
    cfg = config.notify_for(args.job)
    targets = channels.build(config, args.job)
    if not targets:
        print("no notification channels configured" + (f" for job {args.job}" if args.job else ""))
        return EXIT_OK
    failed = 0
    for ch in targets:
        msg = Message("test", job=args.job, stage="log" if ch.kind == "healthchecks" else None)
        [result] = send_now([ch], msg, float(cfg.timeout), 1)
        print(f"{ch.label}: {'ok' if result.ok else result.error}")
        failed += 0 if result.ok else 1
    return EXIT_FAILED if failed else EXIT_OK


def add_notify(sub: Subparsers) -> None:
    s = sub.add_parser("notify", help="notifications: 'notify test' sends a test through every channel")
    ns = s.add_subparsers(dest="notify_cmd", metavar="test")
    t = ns.add_parser("test", help="send a test event through every configured channel (exit 1 if any failed)")
    t.add_argument("--job", help="the job's channels (its [notify] table and healthchecks_url)")


def add_demo(sub: Subparsers) -> None:
    s = sub.add_parser("demo", help="the whole cycle against local sandbox servers")
    s.add_argument("--dir", help="where to put the demo's config, store and state (default: a temp dir)")
    s.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
