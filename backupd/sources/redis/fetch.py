"""Step 3: stat the RDB where it lives and rsync it into the job's staging mirror (delta transfer), with `stat`
before and after to catch a file replaced mid-copy; while rsync writes the new copy, the same bytes go through
one pass (`check.rdb_pass`: the artifact and redis-check-rdb; engine/follow.py explains how)."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupd.engine.follow import follow, is_destination
from backupd.engine.pipeline import ArtifactResult
from backupd.engine.procs import last_line, started
from backupd.engine.remote import RemoteShell, connect, rsync_link_options, ssh_options
from backupd.errors import StepError
from backupd.fsutil import ensure_private_dir
from backupd.settings import SSHCfg
from backupd.sources.base import DumpContext
from backupd.sources.redis.check import RdbPass, rdb_pass


@dataclass(frozen=True)
class FileState:
    size: int
    mtime: int
    inode: int
    now: int  # the file host's clock, for max_age without trusting clock sync


class FileProbe:
    """`stat` of the RDB where it lives: over SSH when the job has [ssh], else locally.

    Over SSH, `start()` connects (Fabric, strict host keys) and opens one remote shell in a background
    thread, so the handshake overlaps the Redis health gate and BGSAVE; every stat is then one round trip.
    A connection error is raised by the first `stat()`, after the Redis steps had their say.
    """

    def __init__(self, ssh: SSHCfg | None) -> None:
        self.ssh = ssh
        self.host = ssh.label if ssh else "localhost"
        self._lock = threading.Lock()
        self._closing = False
        self._cm: Any = None  # set (under the lock) only once the connection is fully open
        self._shell: RemoteShell | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FileProbe:
        if self.ssh is not None:
            self._thread = threading.Thread(target=self._open, name="ssh-probe", daemon=True)
            self._thread.start()
        return self

    def _open(self) -> None:
        assert self.ssh is not None
        cm: Any = connect(self.ssh)
        try:
            conn = cm.__enter__()
        except BaseException as exc:  # handed to the caller's thread by _ready()
            self._error = exc
            return
        try:
            shell = RemoteShell(conn)
        except BaseException as exc:  # connected, but no shell (e.g. a forced command): close, then report
            cm.__exit__(None, None, None)
            self._error = exc
            return
        with self._lock:
            if not self._closing:
                self._cm, self._shell = cm, shell
                return
        shell.close()  # the run ended while we were connecting: nobody else will close this
        cm.__exit__(None, None, None)

    def _ready(self) -> RemoteShell:
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, StepError):
                raise self._error
            raise StepError("ssh connect", f"SSH connection failed: {self._error}", host=self.host)
        assert self._shell is not None
        return self._shell

    def __enter__(self) -> FileProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Close what is open; never wait for a connect still in progress (the Redis step may have failed,
        or SIGTERM arrived): the thread closes its own connection when it gets one."""
        with self._lock:
            self._closing = True
            shell, cm = self._shell, self._cm
        if shell is not None:
            shell.close()
        if cm is not None:
            cm.__exit__(None, None, None)

    def stat(self, path: str) -> FileState:
        if self.ssh is None:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise StepError("stat", f"{path}: {exc.strerror}", host=self.host) from None
            return FileState(st.st_size, int(st.st_mtime), st.st_ino, int(time.time()))
        shell = self._ready()
        try:
            rc, out = shell.run(f"stat -L -c '%s %Y %i' -- {shlex.quote(path)} && date +%s")
        except TimeoutError:
            msg = f"{path}: no answer from the SSH host within {shell.timeout:.0f}s"
            raise StepError("stat", msg, host=self.host) from None
        except OSError as exc:
            raise StepError("stat", f"{path}: {exc}", host=self.host) from None
        fields = out.split()
        if rc != 0 or len(fields) != 4 or not all(f.isdigit() for f in fields):
            raise StepError("stat", f"{path}: {last_line(out)}", host=self.host)
        size, mtime, inode, now = (int(x) for x in fields)
        return FileState(size, mtime, inode, now)


def rsync_file_argv(ssh: SSHCfg | None, path: str, dest: Path, temp_dir: Path) -> list[str]:
    """rsync of one file into the staging mirror, building the new copy in `temp_dir` (see engine/follow.py).

    Over SSH, --no-whole-file keeps the delta algorithm on so blocks already in the previous copy are not
    sent again. Not --inplace: an RDB that grew near its start shifts every later block to a higher offset,
    which --inplace cannot match (it found 0% in our bench vs most of the file without it), and a file
    written in place cannot be followed while it is written; the price is a second copy during the run.
    --ignore-times always compares content: a new dump can have the old one's size and mtime second.
    """
    argv = ["rsync", "--ignore-times", "--times", "--stats", "--protect-args", f"--temp-dir={temp_dir}"]
    src = path
    if ssh is not None:
        argv += ["--no-whole-file", *rsync_link_options(ssh), "-e", shlex.join(["ssh", *ssh_options(ssh)])]
        src = f"{ssh.target}:{path}"
    return [*argv, "--", src, str(dest)]


def _rsync_stats(stdout: str) -> dict[str, str]:
    keep = ("Total file size", "Literal data", "Matched data", "Total bytes received")
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keep:
            out[key.strip()] = value.strip()
    return out


def _after_copy(
    probe: FileProbe, path: str, dest: Path, before: FileState, rc: int, err: list[str], attempt: int
) -> FileState | None:
    """The file's state after a good copy; None when it changed during this (first) copy; else StepError."""
    if rc != 0:
        lines = [x for x in err if x.strip() and not x.startswith("rsync error:")]
        raise StepError("rsync", f"rsync exited {rc}: {last_line(lines)}", host=probe.host)
    after = probe.stat(path)
    changed = (before.size, before.mtime, before.inode) != (after.size, after.mtime, after.inode)
    if changed and attempt == 2:
        raise StepError("rsync", f"{path} changed during the copy twice (size/mtime/inode moved)", host=probe.host)
    staged = dest.stat().st_size
    if not changed and staged != after.size:
        raise StepError("rsync", f"staged copy has {staged} bytes, {path} has {after.size}", host=probe.host)
    return None if changed else after


class _NotThisCopy(Exception):
    """Raised inside a pass whose bytes are not kept: `writing()` aborts the artifact, the caller goes on."""


def stream_staged(ctx: DumpContext, staged: Path, host: str) -> RdbPass:
    """Second pass over the staged copy (used when the copy could not be followed as it was written)."""
    with rdb_pass(ctx, host) as rdb:
        fd = os.open(staged, os.O_RDONLY)
        try:
            while data := os.read(fd, 1 << 20):
                rdb.feed(data)
        finally:
            os.close(fd)
    return rdb


@dataclass
class Copied:
    state: FileState
    rsync: dict[str, str]
    artifact: ArtifactResult  # registered (by `writing()`) and format-checked
    check_rdb: dict[str, Any] | None
    followed: bool  # the pass overlapped the copy (False: a second pass over the staged file)


def _rsync_following(
    probe: FileProbe, path: str, ctx: DumpContext, dest: Path, rdb: RdbPass
) -> tuple[int, str, list[str], bool]:
    """Run rsync into `dest` while `rdb` reads the file it is writing; (rc, stdout, stderr tail, followed)."""
    temp_dir = dest.parent / ".rsync-tmp"
    shutil.rmtree(temp_dir, ignore_errors=True)
    ensure_private_dir(temp_dir)
    with tempfile.TemporaryFile(dir=ctx.tmp_dir) as out:
        with started(rsync_file_argv(probe.ssh, path, dest, temp_dir), stdout=out) as rsync:
            followed = follow(temp_dir, rsync.proc, rdb.feed)
            rc = rsync.wait()
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    return rc, stdout, rsync.tail, rc == 0 and is_destination(followed, dest)


def copy_and_stream(
    probe: FileProbe, path: str, ctx: DumpContext, dest: Path, server: str, first: FileState | None = None
) -> Copied:
    """rsync the file into the mirror and stream it into the artifact in the same pass; if `stat` shows the
    source changed during the copy, retry once, then fail. `first`: a stat just taken (no need to repeat it);
    `server`: the Redis host the errors name.

    A copy that could not be followed is read again from the mirror. Either way the artifact is registered
    once its pass ended; a failed format check raises StepError("verify") naming dump.rdb."""
    for attempt in (1, 2):
        before = first if first is not None and attempt == 1 else probe.stat(path)
        ctx.events.event("step", step="rsync", host=probe.host, path=path, bytes=before.size)
        try:
            with rdb_pass(ctx, server) as rdb:
                rc, stdout, err, followed = _rsync_following(probe, path, ctx, dest, rdb)
                copied = _after_copy(probe, path, dest, before, rc, err, attempt)
                if copied is None:
                    raise _NotThisCopy("changed")
                after = copied
                if not followed:
                    raise _NotThisCopy("second pass")
        except _NotThisCopy as why:
            if str(why) == "changed":
                ctx.events.event("warning", step="rsync", host=probe.host, message=f"{path} changed during copy")
                continue
            ctx.events.event("step", step="verify", host=probe.host, path=str(dest), message="second pass")
            rdb = stream_staged(ctx, dest, server)
        return Copied(after, _rsync_stats(stdout), ctx.last, rdb.verdict, followed)
    raise AssertionError("unreachable")
