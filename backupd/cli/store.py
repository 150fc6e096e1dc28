"""Store maintenance: list, show, prune, catalog rebuild, inspect, repair (each with the function adding its
arguments)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
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
from backupd.errors import EXIT_FAILED, EXIT_OK, BackupdError, UsageError
from backupd.humanize import human_bytes


def _backup_rows(config: Any, job: str | None) -> list[dict[str, Any]]:
    from backupd.actions.keys import is_encrypted, recipients_of
    from backupd.store.backups import Store

    store = Store(config.store_root)
    catalog = open_catalog(config)
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


def add_list(sub: Subparsers) -> None:
    s = sub.add_parser("list", help="committed backups")
    s.add_argument("job", nargs="?")
    s.add_argument("--json", action="store_true")


@command("show")
def cmd_show(args: argparse.Namespace) -> int:
    from backupd.actions.keys import is_encrypted, recipients_of

    config = load(args)
    b = find_backup(config, args.backup_id)
    catalog = open_catalog(config)
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


def add_show(sub: Subparsers) -> None:
    s = sub.add_parser("show", help="one backup in detail")
    s.add_argument("backup_id")
    s.add_argument("--json", action="store_true")


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


def add_prune(sub: Subparsers) -> None:
    s = sub.add_parser("prune", help="apply the retention policy")
    s.add_argument("job", nargs="?")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--json", action="store_true")


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


def add_inspect(sub: Subparsers) -> None:
    s = sub.add_parser("inspect", help="identify and structurally verify an archive file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)


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
        catalog = open_catalog(config)
        try:
            n_local, n_s3 = rebuild_from_s3(config, catalog)
        finally:
            catalog.close()
        s3 = config.settings.s3
        print(
            f"catalog rebuilt: {n_local} backup{'s' if n_local != 1 else ''} from {config.store_root}, "
            f"{n_s3} from s3://{s3.bucket}/{s3.prefix}"
        )
        return _fetch_segments(config)
    catalog = open_catalog(config)
    try:
        n = catalog.rebuild(Store(config.store_root))
    finally:
        catalog.close()
    print(f"catalog rebuilt from {config.store_root}: {n} backup{'s' if n != 1 else ''}")
    return EXIT_OK


def _fetch_segments(config: Any) -> int:
    """`--from-s3`, PITR jobs: the binlog segments the store lacks come down from the bucket (each checked
    against its manifest on arrival), so `restore --until` works on a new machine (docs/pitr.md)."""
    from backupd.store.s3 import Bucket
    from backupd.store.s3_base import S3Error, error_text
    from backupd.store.s3_segments import fetch_segments

    rc = EXIT_OK
    bucket = Bucket(config.settings.s3)
    for job in sorted(config.pitr_windows):
        try:
            n, problems = fetch_segments(bucket, config.store_root, job)
        except S3Error:
            raise
        except Exception as exc:
            raise S3Error(f"fetching the segments of job {job}: {error_text(exc)}", job=job) from exc
        print(f"{job}: {n} binlog segment{'s' if n != 1 else ''} fetched from s3")
        for line in problems:
            print(f"backupd: job {job}: segment not fetched: {line}", file=sys.stderr)
            rc = EXIT_FAILED
    return rc


def add_catalog(sub: Subparsers) -> None:
    s = sub.add_parser("catalog", help="catalog maintenance")
    cs = s.add_subparsers(dest="catalog_cmd", metavar="rebuild")
    r = cs.add_parser("rebuild", help="recreate the catalog from the store's manifests")
    r.add_argument("--from-s3", action="store_true")


@command("repair")
def cmd_repair(args: argparse.Namespace) -> int:
    from backupd.actions.repair import repair
    from backupd.engine.signals import terminate_on_signals

    config = load(args)
    backup = find_backup(config, args.backup)
    catalog = open_catalog(config)
    try:
        with terminate_on_signals():
            lines = repair(config, catalog, backup)
    finally:
        catalog.close()
    for line in lines:
        print(line)
    return EXIT_OK


def add_repair(sub: Subparsers) -> None:
    s = sub.add_parser("repair", help="restore a bad local or S3 copy of a backup from its good twin, verified")
    s.add_argument("backup", metavar="[JOB/]BACKUP_ID")
