"""Command line: argument parsing and output only; the work happens in the modules it calls.

`main` is the entry point (`backupd`, `python -m backupd`). The package: `parser` (global options and the list of
commands), `common` (what the commands share), and one module per group of commands, each holding the handlers
and the functions adding their arguments: `jobs` (run, restore, drill, verify), `store` (list, show, prune, catalog,
inspect, repair), `service` (next, status, daemon, systemd-units), `setup` (check-config, notify, demo).

Startup stays cheap: sources, drivers (pymongo, paramiko, boto3, redis) and the store are imported inside the
handlers that use them, never at module level here.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from backupd.cli.common import HANDLERS, command, events_for, not_implemented
from backupd.cli.parser import build_parser
from backupd.errors import EXIT_FAILED, EXIT_USAGE, BackupdError

__all__ = ["build_parser", "events_for", "main"]


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from backupd.lab.demo import run_demo

    return run_demo(main, Path(args.dir) if args.dir else None, keep=args.keep)


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
