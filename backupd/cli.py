"""Command line: argument parsing and output only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd import __version__
from backupd.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, BackupdError, UsageError
from backupd.humanize import human_age, human_bytes

Handler = Callable[[argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return deco


# ------------------------------------------------------------------ helpers


def load(args: argparse.Namespace) -> Any:
    from backupd.config import load_config, resolve_config_path

    config = load_config(resolve_config_path(args.config))
    for warning in config.warnings:
        print(f"backupd: warning: {warning}", file=sys.stderr)
    return config


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def events_for(config: Any, quiet: bool = False) -> Any:
    from backupd.logs import EventLog

    return EventLog(config.settings.logging.format, quiet=quiet, level=config.settings.logging.level)


# ------------------------------------------------------------------ run


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


# ------------------------------------------------------------------ list / show


def _catalog(config: Any) -> Any:
    from backupd.store.catalog import Catalog

    return Catalog(config.state_dir)


def _backup_rows(config: Any, job: str | None) -> list[dict[str, Any]]:
    from backupd.actions.keys import is_encrypted, recipients_of
    from backupd.store.backups import Store

    store = Store(config.store_root)
    catalog = _catalog(config)
    try:
        rows = []
        jobs = [job] if job else sorted(set(store.jobs()) | set(config.jobs))
        for name in jobs:
            for b in store.backups(name):
                row = catalog.backup(name, b.backup_id)
                drill = catalog.last_drill(name, b.backup_id)
                rows.append(
                    {
                        "job": name,
                        "backup_id": b.backup_id,
                        "bytes": b.size,
                        "verified": b.verified and (row is None or bool(row["verified"])),
                        "s3": row["s3_state"] if row is not None else "unknown",
                        "drilled": drill["outcome"] if drill is not None else None,
                        "drilled_at": drill["finished_at"] if drill is not None else None,
                        "trigger": b.manifest.get("trigger"),
                        "finished_at": b.manifest.get("finished_at"),
                        "path": str(b.path),
                        # the last re-verification of each copy (from the store): ok, level, at
                        "last_verification": {k: {f: v.get(f) for f in ("ok", "level", "at")}
                                              for k, v in b.verdict.items()},
                        "encrypted": is_encrypted(b),
                        "recipients": recipients_of(b),  # fingerprints (sha256 of each age1..., 16 hex)
                        "verification_level": b.verdict.get("local", {}).get("level"),
                    }
                )
            for broken in store.broken(name):
                rows.append(
                    {"job": name, "backup_id": broken.backup_id, "bytes": None, "verified": False, "s3": "unknown",
                     "drilled": None, "drilled_at": None, "trigger": None, "finished_at": None,
                     "path": str(broken.path), "broken": broken.reason, "encrypted": None, "recipients": [],
                     "verification_level": None}
                )
            rows.sort(key=lambda r: (r["job"], r["backup_id"]))
        return rows
    finally:
        catalog.close()


@command("list")
def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    if args.job:
        config.job(args.job)
    rows = _backup_rows(config, args.job)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no backups")
        return EXIT_OK
    def checked(r: dict[str, Any]) -> str:
        marks = [f"{k} {'ok' if v.get('ok') else 'BAD'} {str(v.get('at') or '')[:10]}"
                 for k, v in sorted(r.get("last_verification", {}).items())]
        return ", ".join(marks) or "-"

    print_table(
        ["JOB", "BACKUP", "SIZE", "VERIFIED", "S3", "DRILLED", "LAST CHECKED"],
        [
            [
                r["job"],
                r["backup_id"],
                human_bytes(r["bytes"]),
                "BROKEN" if r.get("broken") else "yes" if r["verified"] else "NO",
                r["s3"],
                r["drilled"] or "-",
                checked(r),
            ]
            for r in rows
        ],
    )
    return EXIT_OK


def _find_backup(config: Any, ref: str) -> Any:
    """`ID` or `JOB/ID`. An ID two jobs share is refused, never resolved to an arbitrary one."""
    from backupd.store.backups import Store

    store = Store(config.store_root)
    job, _, backup_id = ref.rpartition("/")
    if job:
        found = store.find(backup_id, job)
        if found is None:
            raise UsageError(f"no committed backup {backup_id!r} of job {job!r}")
        return found
    matches = [b for name in store.jobs() if (b := store.find(backup_id, name)) is not None]
    if not matches:
        raise UsageError(f"no committed backup {backup_id!r}")
    if len(matches) > 1:
        jobs = ", ".join(b.job for b in matches)
        raise UsageError(f"backup {backup_id} exists in jobs {jobs}: name one as JOB/{backup_id}")
    return matches[0]


@command("show")
def cmd_show(args: argparse.Namespace) -> int:
    from backupd.actions.keys import is_encrypted, recipients_of

    config = load(args)
    b = _find_backup(config, args.backup_id)
    catalog = _catalog(config)
    try:
        row = catalog.backup(b.job, b.backup_id)
        drill = catalog.last_drill(b.job, b.backup_id)
    finally:
        catalog.close()
    info = {
        "path": str(b.path),
        "manifest": b.manifest,
        "s3": row["s3_state"] if row is not None else "unknown",
        "last_drill": dict(drill) if drill is not None else None,
        "encrypted": is_encrypted(b),
        "recipients": recipients_of(b),
        "verification": b.verdict,
    }
    if args.json:
        print_json(info)
        return EXIT_OK
    m = b.manifest
    print(f"backup   {b.job}/{b.backup_id}  ({m.get('type')}, trigger {m.get('trigger')})")
    print(f"path     {b.path}")
    print(f"time     {m.get('started_at')} -> {m.get('finished_at')}")
    print(f"verified {'yes' if b.verified else 'NO'}   s3 {info['s3']}")
    if is_encrypted(b):
        print(f"encrypted age, recipients {', '.join(recipients_of(b)) or 'unknown'} (sha256 fingerprints)")
    if drill is not None:
        print(f"drill    {drill['outcome']} at {drill['finished_at']}")
    for where, v in sorted(b.verdict.items()):
        print(f"checked  {where}: {'ok' if v.get('ok') else 'FAILED'} ({v.get('level')}) at {v.get('at')}")
    for w in m.get("warnings", []):
        print(f"warning  {w}")
    for a in m.get("artifacts", []):
        v = a.get("verification", {})
        print(
            f"  {a['file']}: {human_bytes(a['bytes'])} ({human_bytes(a['raw_bytes'])} raw), "
            f"{a['format']}, sha256 {a['sha256'][:16]}..., {'ok' if v.get('ok') else 'BAD'}"
            + (f", age to {len(a.get('recipients', []))} recipient(s)" if a.get("encrypted") else "")
        )
        for w in v.get("warnings", []):
            print(f"    warning: {w}")
        stats = a.get("stats", {})
        if stats:
            print(f"    stats: {json.dumps(stats, sort_keys=True)[:400]}")
    return EXIT_OK


# ------------------------------------------------------------------ verify / inspect


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
            targets.append(_find_backup(config, t))
        else:
            if t not in config.jobs and t not in store.jobs():
                config.job(t)
            targets.extend(store.backups(t))
            broken.extend(store.broken(t))
    if args.scheduled:
        lower_priority()
    catalog = _catalog(config)
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
    catalog = _catalog(config)
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


# ------------------------------------------------------------------ prune


@command("prune")
def cmd_prune(args: argparse.Namespace) -> int:
    from backupd.store.prune import prune_jobs

    config = load(args)
    jobs = [args.job] if args.job else sorted(config.jobs)
    for j in jobs:
        config.job(j)
    rows, errors = prune_jobs(config, jobs, events_for(config, quiet=True), dry_run=args.dry_run)
    if args.json:
        print_json([r.to_dict() for r in rows])
    elif rows:
        print_table(
            ["JOB", "BACKUP", "WHERE", "ACTION", "WHY"],
            [[r.job, r.backup_id, r.where, r.action, ", ".join(r.reasons)] for r in rows],
        )
        n = sum(1 for r in rows if not r.keep and not r.locked_until and not r.warning)
        verb = "would delete" if args.dry_run else "deleted"
        locked = sum(1 for r in rows if r.locked_until)
        print(f"{verb} {n} of {len(rows)}" + (f", {locked} S3 copies locked (deleted once their lock expires)"
                                               if locked else "")
              + (" (dry run: nothing was deleted)" if args.dry_run else ""))
    else:
        print("no backups")
    for r in rows:
        if r.warning:
            print(f"backupd: warning: job {r.job}: prune {r.where} {r.backup_id}: {r.warning}", file=sys.stderr)
    for e in errors:
        print(f"backupd: {e}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def _inspect_keys(args: argparse.Namespace) -> list[Any]:
    from backupd.engine.crypto import IDENTITY_ENV, load_identities

    where = args.identity or os.environ.get(IDENTITY_ENV)
    if not where:
        return []
    try:
        return load_identities(Path(where))
    except OSError as exc:
        raise BackupdError(f"inspect: age identity {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BackupdError(f"inspect: age identity {where}: {exc}") from None


def _inspect_sealed(path: Path, as_json: bool) -> int:
    """An encrypted file without an identity: what its age header proves."""
    from backupd.store.verify import age_header_problems

    problems = age_header_problems(path, {})
    if as_json:
        print_json({"file": str(path), "encrypted": True, "ok": not problems, "problems": problems,
                    "level": "header"})
    else:
        print(f"{path}: age-encrypted, header {'OK' if not problems else 'BAD'};"
              " content not checked (give --identity FILE)")
    if problems:
        print(f"backupd: inspect {path}: {problems[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    from backupd.engine.crypto import is_encrypted, unlocking
    from backupd.formats.registry import describe
    from backupd.store.verify import check_stream_file

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"inspect: {path}: no such file")
    if is_encrypted(path):
        keys = _inspect_keys(args)
        if not keys:
            return _inspect_sealed(path, args.json)
        with unlocking(keys):
            fc = check_stream_file(path)
    else:
        fc = check_stream_file(path)
    if args.json:
        print_json(
            {
                "file": str(path),
                "format": fc.format,
                "compression": fc.compression,
                "ok": fc.ok,
                "problems": fc.problems,
                "result": fc.result.to_dict() if fc.result else None,
            }
        )
    else:
        print(
            f"{path}: {fc.format or 'unknown format'}, compression {fc.compression}, "
            f"{'OK' if fc.ok else 'BAD'}"
        )
        if fc.format and fc.result is not None:
            for line in describe(fc.format, fc.result):
                print(f"  {line}")
            for w in fc.result.warnings:
                print(f"  warning: {w}")
    if not fc.ok:
        print(f"backupd: inspect {path}: {fc.problems[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------ config / catalog


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


@command("catalog")
def cmd_catalog(args: argparse.Namespace) -> int:
    from backupd.store.backups import Store
    from backupd.store.locks import all_job_locks

    config = load(args)
    if args.catalog_cmd != "rebuild":
        raise UsageError("catalog: use 'catalog rebuild'")
    jobs = set(config.jobs) | set(Store(config.store_root).jobs())
    with all_job_locks(config.state_dir, jobs):  # no run, prune or S3 re-copy writes rows meanwhile
        return _rebuild_catalog(args, config)


def _rebuild_catalog(args: argparse.Namespace, config: Any) -> int:
    from backupd.store.backups import Store

    if getattr(args, "from_s3", False):
        from backupd.store.s3_sync import rebuild_from_s3

        if not config.settings.s3.enabled:
            raise UsageError("catalog rebuild --from-s3: s3 is not enabled in the configuration")
        catalog = _catalog(config)
        try:
            n_local, n_s3 = rebuild_from_s3(config, catalog)
        finally:
            catalog.close()
        s3 = config.settings.s3
        print(
            f"catalog rebuilt: {n_local} backup{'s' if n_local != 1 else ''} from {config.store_root}, "
            f"{n_s3} from s3://{s3.bucket}/{s3.prefix}"
        )
        return EXIT_OK
    catalog = _catalog(config)
    try:
        n = catalog.rebuild(Store(config.store_root))
    finally:
        catalog.close()
    print(f"catalog rebuilt from {config.store_root}: {n} backup{'s' if n != 1 else ''}")
    return EXIT_OK


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from backupd.lab.demo import run_demo

    return run_demo(main, Path(args.dir) if args.dir else None, keep=args.keep)


# ------------------------------------------------------------------ next / status / daemon / systemd-units


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


@command("daemon")
def cmd_daemon(args: argparse.Namespace) -> int:
    from backupd.daemon.scheduler import run_daemon

    return run_daemon(load(args))


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


# ------------------------------------------------------------------ restore / drill


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
        reports = drill_jobs(config, names, args.backup, args.identity, args.pitr)
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


@command("repair")
def cmd_repair(args: argparse.Namespace) -> int:
    from backupd.actions.repair import repair
    from backupd.engine.signals import terminate_on_signals

    config = load(args)
    backup = _find_backup(config, args.backup)
    catalog = _catalog(config)
    try:
        with terminate_on_signals():
            lines = repair(config, catalog, backup)
    finally:
        catalog.close()
    for line in lines:
        print(line)
    return EXIT_OK


def not_implemented(what: str) -> int:
    print(f"backupd: {what}: not implemented yet", file=sys.stderr)
    return EXIT_USAGE


# ------------------------------------------------------------------ parser


IDENTITY_HELP = (
    "age identity (private key) file for encrypted backups"
    " (default: $BACKUPD_AGE_IDENTITY_FILE, else [encryption] identity_file)"
)


def build_parser() -> argparse.ArgumentParser:
    from backupd.sources import restore_options

    p = argparse.ArgumentParser(
        prog="backupd", description="Backups that are verified, pruned safely and drilled."
    )
    p.add_argument("--config", help="config file (default: $BACKUPD_CONFIG or /etc/backupd/backupd.toml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"backupd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("run", help="run jobs now (exit 0 ok, 1 failed, 75 already running)")
    s.add_argument("jobs", nargs="*", metavar="JOB")
    s.add_argument("--all", action="store_true", help="every enabled job")
    s.add_argument(
        "--trigger", default="manual", choices=["manual", "schedule", "catchup"], help=argparse.SUPPRESS
    )

    s = sub.add_parser("list", help="committed backups")
    s.add_argument("job", nargs="?")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("show", help="one backup in detail")
    s.add_argument("backup_id")
    s.add_argument("--json", action="store_true")

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

    s = sub.add_parser("inspect", help="identify and structurally verify an archive file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)

    s = sub.add_parser("prune", help="apply the retention policy")
    s.add_argument("job", nargs="?")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("restore", help="restore a backup to a target")
    s.add_argument("job")
    s.add_argument("--backup", metavar="ID")
    s.add_argument("--to", metavar="TARGET")
    s.add_argument("--yes", action="store_true", help="allow writing into a non-empty target")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)
    for opt in restore_options():  # each source declares the options its restore takes
        extra: dict[str, Any] = {"metavar": opt.metavar} if opt.action != "store_true" else {}
        s.add_argument(opt.flag, dest=opt.dest, action=opt.action, default=opt.default, help=opt.help, **extra)

    s = sub.add_parser("repair", help="restore a bad local or S3 copy of a backup from its good twin, verified")
    s.add_argument("backup", metavar="[JOB/]BACKUP_ID")

    s = sub.add_parser("drill", help="restore the latest backup into a scratch target and compare")
    s.add_argument("jobs", nargs="*", metavar="JOB")
    s.add_argument("--backup", metavar="ID", help="drill this backup of the one JOB named")
    s.add_argument("--pitr", action="store_true", help="the point-in-time drill: base N rolled forward to base N+1")
    s.add_argument("--json", action="store_true")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)

    s = sub.add_parser("next", help="upcoming fire times")
    s.add_argument("job", nargs="?")
    s.add_argument("--count", type=int, default=5)
    s.add_argument("--after", metavar="ISO8601")

    s = sub.add_parser("status", help="per job: last good backup, age, overdue, next run")
    s.add_argument("--json", action="store_true")
    s.add_argument("--notify", action="store_true",
                   help="also run the notification checks and retry the outbox (timer mode)")
    s.add_argument("--html", metavar="FILE", help="also write the status page to FILE")

    s = sub.add_parser("notify", help="notifications: 'notify test' sends a test through every channel")
    ns = s.add_subparsers(dest="notify_cmd", metavar="test")
    t = ns.add_parser("test", help="send a test event through every configured channel (exit 1 if any failed)")
    t.add_argument("--job", help="the job's channels (its [notify] table and healthchecks_url)")

    s = sub.add_parser("check-config", help="validate the configuration")
    s.add_argument("--connect", action="store_true", help="also check that every source is reachable")

    s = sub.add_parser("catalog", help="catalog maintenance")
    cs = s.add_subparsers(dest="catalog_cmd", metavar="rebuild")
    r = cs.add_parser("rebuild", help="recreate the catalog from the store's manifests")
    r.add_argument("--from-s3", action="store_true")

    sub.add_parser("daemon", help="scheduler + /health + /metrics")

    s = sub.add_parser("systemd-units", help="write per-job systemd timer units")
    s.add_argument("--output", metavar="DIR")

    s = sub.add_parser("demo", help="the whole cycle against local sandbox servers")
    s.add_argument("--dir", help="where to put the demo's config, store and state (default: a temp dir)")
    s.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handler = HANDLERS.get(args.command)
    try:
        if handler is None:
            return not_implemented(args.command)
        return handler(args)
    except BackupdError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"backupd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backupd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(
            f"backupd: {args.command}: unexpected error: {type(exc).__name__}: {exc} (run with --debug)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except BaseException as exc:
        from backupd.engine.signals import Terminated

        if isinstance(exc, Terminated):
            print(f"backupd: {args.command}: {exc}; nothing was committed", file=sys.stderr)
            return 128 + exc.signum
        raise


if __name__ == "__main__":
    sys.exit(main())
