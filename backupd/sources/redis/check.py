"""Step 4: one pass over the RDB's bytes into the artifact (zstd + sha256 + our RDB check) and, fed the same
bytes on the other core, `redis-check-rdb`, which decodes every value."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from backupd.engine.procs import Started, last_line, started
from backupd.errors import StepError
from backupd.formats.rdb import RdbChecker
from backupd.sources.base import DumpContext

CHECK_RDB_TIMEOUT = 6 * 3600
_CHECK_INFO = re.compile(r"^\[info\] (\d+) (keys read|expires|already expired)$")
_CHECK_OK = re.compile(r"^\[offset \d+\] \\o/ RDB looks OK! \\o/$")
_CHECK_UNSUPPORTED = re.compile(r"^\[offset \d+\] (Can't handle RDB format version \d+)$")


def check_rdb_argv(tool: str, path: Path) -> list[str]:
    return [tool, str(path)]


def parse_check_rdb(output: str, exit_code: int) -> dict[str, Any]:
    """redis-check-rdb's verdict: ok flag, key/expiry counts, the first error line, or 'unsupported'.

    Only whole lines count: key names appear in its error output, and a key may be named "RDB looks OK".
    """
    lines = [x.strip() for x in output.splitlines()]
    res: dict[str, Any] = {"ok": exit_code == 0 and any(_CHECK_OK.match(x) for x in lines), "exit": exit_code}
    names = {"keys read": "keys", "expires": "expires", "already expired": "already_expired"}
    for line in lines:
        m = _CHECK_INFO.match(line)
        if m:
            res[names[m.group(2)]] = int(m.group(1))
        u = _CHECK_UNSUPPORTED.match(line)
        if u and "--- RDB ERROR DETECTED ---" not in lines[: lines.index(line)]:
            res["unsupported"] = u.group(1)
    if not res["ok"]:
        if "--- RDB ERROR DETECTED ---" in lines:
            after = lines[lines.index("--- RDB ERROR DETECTED ---") + 1 :]
            detail = [x for x in after if x and not x.startswith("[info]")]
            res["error"] = "; ".join(detail[:2]) or "RDB ERROR DETECTED"
        else:
            res["error"] = last_line(lines, "no verdict printed")
    return res


class CheckRdbFeed:
    """`redis-check-rdb /dev/stdin` fed the same bytes as the pipeline: it decodes every value on the other
    core while we copy, instead of reading the file again afterwards. Its output (stdout and stderr) goes into
    one tail, which holds its verdict."""

    def __init__(self, child: Started) -> None:
        self.child = child

    def feed(self, data: bytes) -> None:
        self.child.write(data)  # once it stops reading (unsupported version, or an error it will report): no-op

    def finish(self) -> dict[str, Any]:
        try:
            rc = self.child.wait(timeout=CHECK_RDB_TIMEOUT)
        except subprocess.TimeoutExpired:  # the `started()` block kills it by its PID
            raise StepError("redis-check-rdb", f"no verdict after {CHECK_RDB_TIMEOUT}s") from None
        return parse_check_rdb("\n".join(self.child.tail), rc)


class RdbPass:
    """One pass over the RDB's bytes: the artifact being written (zstd + sha256 + our RDB check) and
    redis-check-rdb when installed. `verdict` is redis-check-rdb's, set when the pass ended well."""

    def __init__(self, write: Callable[[bytes], None], check_rdb: CheckRdbFeed | None) -> None:
        self._write = write
        self.check_rdb = check_rdb
        self.verdict: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        self._write(data)
        if self.check_rdb is not None:
            self.check_rdb.feed(data)


@contextmanager
def rdb_pass(ctx: DumpContext, host: str) -> Iterator[RdbPass]:
    """A pass writing one artifact through `ctx.writing()`: an exception in the block (including one that only
    means "not this copy") aborts it and stops redis-check-rdb; a good end waits for redis-check-rdb's verdict,
    then closes, verifies and registers the artifact (a failed format check raises there)."""
    tool = shutil.which("redis-check-rdb")
    artifact = ctx.writing("dump", "redis-rdb", ".rdb", RdbChecker(), label="dump.rdb", host=host)
    with artifact as writer, ExitStack() as procs:
        feed = None
        if tool is not None:
            argv = check_rdb_argv(tool, Path("/dev/stdin"))
            child = procs.enter_context(started(argv, stdin=True, stdout="tail", tail_lines=200))
            feed = CheckRdbFeed(child)
        rdb = RdbPass(writer.write, feed)
        yield rdb
        rdb.verdict = feed.finish() if feed is not None else None
