"""The argument parser: global options, then each command's arguments from its command module, in the order
`backupd --help` lists them. A new command: a handler with @command and an add_NAME function in its group's
module, and one line in COMMANDS below."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from backupd import __version__
from backupd.cli.common import Subparsers
from backupd.cli.jobs import add_drill, add_restore, add_run, add_stream, add_verify
from backupd.cli.service import add_daemon, add_next, add_status, add_systemd_units
from backupd.cli.setup import add_check_config, add_demo, add_notify
from backupd.cli.store import add_catalog, add_inspect, add_list, add_prune, add_repair, add_show

# The commands in `backupd --help` order: the function adding each one's subparser and arguments.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    add_run,
    add_list,
    add_show,
    add_verify,
    add_inspect,
    add_prune,
    add_restore,
    add_repair,
    add_drill,
    add_next,
    add_status,
    add_notify,
    add_check_config,
    add_catalog,
    add_stream,
    add_daemon,
    add_systemd_units,
    add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="backupd", description="Backups that are verified, pruned safely and drilled."
    )
    p.add_argument("--config", help="config file (default: $BACKUPD_CONFIG or /etc/backupd/backupd.toml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"backupd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p
