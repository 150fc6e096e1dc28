"""Commands that move data: run, restore, drill, verify (each with the function adding its arguments)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from backupd.cli.common import (
    IDENTITY_HELP,
    Subparsers,
    command,
    events_for,
    find_backup,
    load,
    open_catalog,
    print_json,
    print_table,
)
from backupd.errors import EXIT_FAILED, EXIT_OK, UsageError
from backupd.humanize import human_bytes


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from backupd.actions.run import run_job
    from backupd.errors import LockedError

    config = load(args)
    if args.all:
        names = [n for n, j in config.jobs.items() if j.enabled]
    else:
        if not args.jobs:
            raise UsageError("run: name a job or use --all")
        names = list(args.jobs)
        for n in names:
            config.job(n)
    rc = EXIT_OK
    for name in names:
        events = events_for(config)
        try:
            result = run_job(config, name, args.trigger, events, progress=True)
        except LockedError as exc:
            print(f"backupd: {exc}", file=sys.stderr)
            if len(names) == 1:
                return exc.exit_code
            rc = max(rc, EXIT_FAILED)
            continue
        if result.ok:
            if events.tty:
                print(
                    f"{name}: backup {result.backup_id} committed ({human_bytes(result.bytes)}, "
                    f"{result.duration:.1f}s)"
                )
        else:
            print(f"backupd: {result.error}", file=sys.stderr)
            rc = EXIT_FAILED
    return rc


def add_run(sub: Subparsers) -> None:
    s = sub.add_parser("run", help="run jobs now (exit 0 ok, 1 failed, 75 already running)")
    s.add_argument("jobs", nargs="*", metavar="JOB")
    s.add_argument("--all", action="store_true", help="every enabled job")
    s.add_argument(
        "--trigger", default="manual", choices=["manual", "schedule", "catchup"], help=argparse.SUPPRESS
    )


@command("restore")
def cmd_restore(args: argparse.Namespace) -> int:
    from backupd.actions.restore import restore
    from backupd.engine.signals import terminate_on_signals
    from backupd.logs import ByteProgress
    from backupd.sources import restore_options
    from backupd.sources.base import RestoreRequest

    config = load(args)
    options = {o.dest: getattr(args, o.dest) for o in restore_options() if getattr(args, o.dest) != o.default}
    req = RestoreRequest(args.job, args.backup, args.to, args.yes, options, identity=args.identity)
    began = datetime.now(UTC)
    with terminate_on_signals(), ByteProgress(sys.stdout.isatty()) as progress:
        task = progress.task(f"restore {args.job}")
        backup, done = restore(config, req, progress=task.advance)
    seconds = (datetime.now(UTC) - began).total_seconds()
    for r in done:
        objects = ", ".join(f"{v} {k}" for k, v in r.objects.items()) or "done"
        print(f"{r.artifact} -> {r.target}: {objects} ({r.seconds:.1f}s)")
    print(f"restored {args.job}/{backup.backup_id}: {len(done)} artifact(s) in {seconds:.1f}s")
    return EXIT_OK


def add_restore(sub: Subparsers) -> None:
    """The generic options here; each source declares the ones its restore takes (`Source.restore_options`)."""
    from backupd.sources import restore_options  # the registry, light: the sources' engines load when used

    s = sub.add_parser("restore", help="restore a backup to a target")
    s.add_argument("job")
    s.add_argument("--backup", metavar="ID")
    s.add_argument("--to", metavar="TARGET")
    s.add_argument("--yes", action="store_true", help="allow writing into a non-empty target")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)
    for opt in restore_options():  # each source declares the options its restore takes
        extra: dict[str, Any] = {"metavar": opt.metavar} if opt.action != "store_true" else {}
        s.add_argument(opt.flag, dest=opt.dest, action=opt.action, default=opt.default, help=opt.help, **extra)


def _cell(value: object, width: int = 40) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


@command("drill")
def cmd_drill(args: argparse.Namespace) -> int:
    from backupd.actions.drill import drill_jobs
    from backupd.engine.signals import terminate_on_signals

    config = load(args)
    names = list(args.jobs) or sorted(n for n, j in config.jobs.items() if j.enabled)
    if not names:
        raise UsageError("drill: no jobs configured")
    with terminate_on_signals():
        reports = drill_jobs(config, names, args.backup, args.identity)
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            head = f"{r.job}/{r.backup_id or '-'}: drill {r.outcome.upper() if not r.ok else 'ok'}"
            print(f"{head} (restore {r.restore_seconds:.1f}s)")
            for note in r.notes:
                print(f"  note: {note}")
            if r.checks:
                print_table(
                    ["CHECK", "EXPECTED", "ACTUAL", "OK"],
                    [[c.check, _cell(c.expected), _cell(c.actual), "ok" if c.ok else "FAIL"] for c in r.checks],
                )
    for r in reports:
        if not r.ok:
            print(f"backupd: drill {r.job}: {r.error}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def add_drill(sub: Subparsers) -> None:
    s = sub.add_parser("drill", help="restore the latest backup into a scratch target and compare")
    s.add_argument("jobs", nargs="*", metavar="JOB")
    s.add_argument("--backup", metavar="ID", help="drill this backup of the one JOB named")
    s.add_argument("--json", action="store_true")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    from backupd.actions.verify import Verifier, scheduled, verify_targets
    from backupd.engine.procs import lower_priority
    from backupd.store.backups import BrokenBackup, Store, is_backup_id

    config = load(args)
    store = Store(config.store_root)
    names = args.targets or sorted(set(store.jobs()) | set(config.jobs))
    targets = []
    broken: list[BrokenBackup] = []
    for t in names:
        if is_backup_id(t.rpartition("/")[2]):
            targets.append(find_backup(config, t))
        else:
            if t not in config.jobs and t not in store.jobs():
                config.job(t)
            targets.extend(store.backups(t))
            broken.extend(store.broken(t))
    if args.scheduled:
        lower_priority()
    catalog = open_catalog(config)
    verifier = Verifier(config, catalog, args.identity)
    try:
        if args.scheduled:
            report = scheduled(config, verifier, sorted({t.rpartition("/")[0] or t for t in names}))
        else:
            report = verify_targets(config, verifier, targets, broken)
    finally:
        catalog.close()
    for w in verifier.warnings:
        print(f"backupd: {w}", file=sys.stderr)
    bad = [r for r in report if not r.ok]
    if args.json:
        print_json([{**r.__dict__, "problems": r.problems} for r in report])
    else:
        for r in report:
            where = "s3 " if r.copy == "s3" else ""
            state = f"skipped ({r.skipped})" if r.skipped else ("ok" if r.ok else "BAD")
            if not r.skipped and r.copy == "local":
                state += f" ({r.level})"
            print(f"{where}{r.job}/{r.backup_id}: {state}")
            for p in r.problems:
                print(f"  {p}")
        if not report:
            print("nothing to verify")
    for r in bad:
        where = " (S3 copy)" if r.copy == "s3" else ""
        print(f"backupd: verify {r.job}/{r.backup_id}{where}: {r.problems[0]}", file=sys.stderr)
    rc = EXIT_FAILED if bad else EXIT_OK
    if args.s3 or (args.scheduled and config.settings.s3.enabled):
        rc = max(rc, _verify_s3(config, sorted({b.job for b in targets} if args.targets else names), args.json))
    return rc


def _verify_s3(config: Any, jobs: list[str], as_json: bool) -> int:
    """`verify --s3`: re-check every copy in the bucket, re-ship pending/failed ones; exit 1 if any is bad."""
    from backupd.store.s3_sync import verify_copies

    if not config.settings.s3.enabled:
        raise UsageError("verify --s3: s3 is not enabled in the configuration ([s3] enabled = true)")
    catalog = open_catalog(config)
    try:
        reports = verify_copies(config, jobs, catalog, events_for(config, quiet=True))
    finally:
        catalog.close()
    if as_json:
        print_json([r.__dict__ for r in reports])
    else:
        for r in reports:
            print(f"s3 {r.job}/{r.backup_id}: {r.action}, {'ok' if r.ok else 'BAD'}")
            for p in r.problems:
                print(f"  {p}")
        if not reports:
            print("s3: no copies to check")
    bad = [r for r in reports if not r.ok]
    for r in bad:
        print(f"backupd: verify --s3 {r.job}/{r.backup_id}: {r.problems[0]}", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK


def add_verify(sub: Subparsers) -> None:
    s = sub.add_parser("verify", help="re-hash and re-check stored archives (exit 1 if any is bad)")
    s.add_argument("targets", nargs="*", metavar="JOB|BACKUP_ID")
    s.add_argument("--json", action="store_true")
    s.add_argument("--s3", action="store_true", help="also check the copies in S3")
    s.add_argument(
        "--scheduled", action="store_true",
        help="the scheduled re-verification: least recently verified first, low priority, skips running jobs,"
        " samples S3 copies ([s3] verify_read_fraction)",
    )

    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)


@command("stream")
def cmd_stream(args: argparse.Namespace) -> int:
    from backupd.actions.stream import stop_on_signals, stream_job

    config = load(args)
    with stop_on_signals() as stop:
        stream_job(config, args.job, stop, events_for(config))
    return EXIT_OK


def add_stream(sub: Subparsers) -> None:
    s = sub.add_parser("stream", help="archive a PITR job's binlog continuously (foreground; docs/pitr.md)")
    s.add_argument("job", metavar="JOB")
