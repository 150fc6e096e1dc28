"""What every command module shares: the handler registry, loading the config, tables, JSON and event logs.

Nothing here imports a source, a driver or the config at module level: `backupd --help` must not pay for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from backupd.errors import EXIT_USAGE, UsageError

Handler = Callable[[argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def command(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return deco


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


def open_catalog(config: Any) -> Any:
    from backupd.store.catalog import Catalog

    return Catalog(config.state_dir)


def find_backup(config: Any, ref: str) -> Any:
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


def not_implemented(what: str) -> int:
    print(f"backupd: {what}: not implemented yet", file=sys.stderr)
    return EXIT_USAGE


IDENTITY_HELP = (
    "age identity (private key) file for encrypted backups"
    " (default: $BACKUPD_AGE_IDENTITY_FILE, else [encryption] identity_file)"
)
