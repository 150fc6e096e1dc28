"""Redis: commit only a fresh, complete, verified RDB copied from a healthy replica.

Copying "the latest dump.rdb" naively can ship a stale file (no save since yesterday) or one from a replica
that is resyncing. So a run (1) gates on the server's replication/persistence state over the Redis protocol,
(2) makes a fresh BGSAVE and proves it finished (LASTSAVE advanced, status ok), (3) rsyncs the file into the
job's staging mirror (delta transfer) with `stat` before and after to catch a file replaced mid-copy, and
(4) in the same pass, while rsync writes the new copy, streams its bytes through the pipeline (zstd + sha256
+ RDB CRC check) and into `redis-check-rdb`, which decodes every value (backupd.follow explains how).
Each refusal is one line naming the host and the field that failed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backupd.engine.follow import follow, is_destination
from backupd.engine.pipeline import ArtifactResult
from backupd.engine.procs import drain_lines, last_line
from backupd.engine.remote import RemoteShell, connect, rsync_link_options, ssh_options
from backupd.errors import StepError
from backupd.formats.rdb import RdbChecker
from backupd.fsutil import ensure_private_dir
from backupd.settings import SSHCfg, read_secret
from backupd.sources.base import DumpContext
from backupd.sources.redis.config import RedisJob

STAGED_NAME = "dump.rdb"
POLL_MAX = 0.5  # seconds between INFO polls once a save is slow
CHECK_RDB_TIMEOUT = 6 * 3600
_BUSY_RDB = "already in progress"
_BUSY_CHILD = "another child process is active"
_CHECK_INFO = re.compile(r"^\[info\] (\d+) (keys read|expires|already expired)$")
_CHECK_OK = re.compile(r"^\[offset \d+\] \\o/ RDB looks OK! \\o/$")
_CHECK_UNSUPPORTED = re.compile(r"^\[offset \d+\] (Can't handle RDB format version \d+)$")


def host_label(job: RedisJob) -> str:
    return f"{job.host}:{job.port}"


def client(job: RedisJob, timeout: float = 30.0) -> redis.Redis:
    """A redis-py client; the password (from password_file) only ever travels in AUTH over the socket."""
    return redis.Redis(
        host=job.host,
        port=job.port,
        password=read_secret(job.password_file),
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 10.0),
        decode_responses=False,
        # redis-py retries connection errors with backoff by default, and a refused password is one:
        # retry only timeouts, so a wrong password fails at once.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2, supported_errors=(redis.TimeoutError,)),
    )


def redis_error(exc: Exception, job: RedisJob, step: str) -> StepError:
    """One line for a redis-py error; never echoes the password."""
    text = " ".join(str(exc).split())
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "invalid password" in text:
        msg = "authentication failed: the password in password_file was refused"
    elif "NOAUTH" in text or "Authentication required" in text:
        msg = "authentication required: set password_file"
    elif isinstance(exc, redis.TimeoutError):
        msg = f"timed out talking to Redis ({text})"
    elif isinstance(exc, redis.ConnectionError):
        msg = f"cannot connect to Redis: {text}"
    else:
        msg = f"Redis replied: {text}"
    return StepError(step, msg, job=None, host=host_label(job))


# ---------------------------------------------------------------- 1. health gate


def health_problems(info: dict[str, Any], require_replica: bool) -> list[str]:
    """Every reason the server's state forbids a backup, from INFO replication + persistence (pure)."""
    problems: list[str] = []
    role = str(info.get("role", "?"))
    if require_replica and role != "slave":
        problems.append(f"role is {role} (require_replica = true: point the job at a replica)")
    if role == "slave":
        link = str(info.get("master_link_status", "?"))
        if link != "up":
            since = info.get("master_link_down_since_seconds")
            ago = f", down for {since}s" if since is not None else ""
            problems.append(f"master_link_status is {link}{ago} (require an up link to the master)")
        if int(info.get("master_sync_in_progress", 0)):
            problems.append("master_sync_in_progress is 1 (a full resync from the master is running)")
    for field in ("loading", "async_loading"):
        if int(info.get(field, 0)):
            problems.append(f"{field} is 1 (the server is loading a dataset)")
    return problems


def health_gate(conn: redis.Redis, job: RedisJob) -> dict[str, Any]:
    """Refuse a server that is not a linked, idle replica; returns the INFO fields the manifest records."""
    info: dict[str, Any] = {}
    for section in ("server", "replication", "persistence"):
        info.update(conn.info(section))
    problems = health_problems(info, job.require_replica)
    if problems:
        raise StepError("health", problems[0], host=host_label(job))
    return info


# ---------------------------------------------------------------- 2. fresh dump


COARSE_SLACK = 0.05  # seconds; a Linux tick is at most 10 ms (HZ=100)


def _lastsave(conn: redis.Redis) -> tuple[int, int]:
    """LASTSAVE and the save-attempt counter (rdb_saves, -1 before Redis 7.0)."""
    info = conn.info("persistence")
    return int(info["rdb_last_save_time"]), int(info.get("rdb_saves", -1))


def _server_now(conn: redis.Redis) -> int:
    """The server's clock in whole seconds, as its `time(NULL)` may still read it.

    TIME is gettimeofday(), but the child stamps the RDB's ctime with time(NULL), which on Linux reads the
    coarse clock and can trail by up to a scheduler tick: just after a second boundary TIME says N while a
    save started later still writes ctime N-1. Reading TIME as COARSE_SLACK earlier keeps the two in order.
    """
    sec, usec = conn.time()
    return int(sec + usec / 1e6 - COARSE_SLACK)


def _poll(conn: redis.Redis, deadline: float, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """INFO persistence until `done(info)` or the deadline; None on timeout."""
    delay = 0.02
    while True:
        info: dict[str, Any] = conn.info("persistence")
        if done(info):
            return info
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, POLL_MAX)


@dataclass
class SaveResult:
    lastsave_before: int
    lastsave: int
    requested_at: int  # server clock when BGSAVE was sent: the RDB's ctime must not be older
    seconds: float
    scheduled: bool
    waited_for_running: bool


def fresh_bgsave(conn: redis.Redis, job: RedisJob, timeout: float) -> SaveResult:
    """BGSAVE and wait until it provably finished: LASTSAVE advanced and rdb_last_bgsave_status is ok.

    LASTSAVE has one-second resolution, so we first let the server's clock pass the previous LASTSAVE;
    "advanced" then cannot be confused with a save made earlier in the same second.
    """
    host = host_label(job)
    t0 = time.monotonic()
    deadline = t0 + timeout
    scheduled = waited = False
    while True:
        before, saves = _lastsave(conn)
        while _server_now(conn) <= before:
            time.sleep(0.05)
        requested = _server_now(conn)
        if _lastsave(conn) != (before, saves):
            continue  # another save ended while we waited for the clock: note the new LASTSAVE
        try:
            conn.bgsave(schedule=False)  # redis-py defaults to SCHEDULE, which hides a busy child
            break
        except redis.ResponseError as exc:
            text = str(exc).lower()
            if _BUSY_RDB in text:
                # Someone else's BGSAVE (maybe started before we noted LASTSAVE): let it end, then ours.
                waited = True
                if _poll(conn, deadline, lambda i: not int(i["rdb_bgsave_in_progress"])) is None:
                    raise StepError(
                        "bgsave",
                        f"another BGSAVE was still running after {timeout:.0f}s (bgsave_timeout)",
                        host=host,
                    ) from None
                continue
            if _BUSY_CHILD in text:
                conn.bgsave(schedule=True)  # starts as soon as the AOF rewrite (or module fork) ends
                scheduled = True
                break
            raise StepError("bgsave", f"BGSAVE refused: {' '.join(str(exc).split())}", host=host) from None

    def finished(info: dict[str, Any]) -> bool:
        if int(info["rdb_bgsave_in_progress"]):
            return False
        if saves >= 0:  # rdb_saves (7.0+) counts every attempt, failed ones too
            return int(info["rdb_saves"]) > saves
        if int(info["rdb_last_save_time"]) > before:
            return True
        # not running and LASTSAVE unchanged: ours failed (or a scheduled one has not started yet)
        return not scheduled and info.get("rdb_last_bgsave_status") == "err"

    info = _poll(conn, deadline, finished)
    if info is None:
        raise StepError("bgsave", f"BGSAVE did not finish within {timeout:.0f}s (bgsave_timeout)", host=host)
    status = info.get("rdb_last_bgsave_status")
    if status != "ok":
        raise StepError(
            "bgsave",
            f"rdb_last_bgsave_status is {status} (BGSAVE failed: see the Redis log on {host})",
            host=host,
        )
    after = int(info["rdb_last_save_time"])
    if after <= before:
        raise StepError("bgsave", f"LASTSAVE did not advance past {before} (no new dump was written)", host=host)
    return SaveResult(before, after, requested, time.monotonic() - t0, scheduled, waited)


# ---------------------------------------------------------------- 3. locate, stat, copy


def locate(conn: redis.Redis, job: RedisJob) -> str:
    """The RDB's path on the Redis host: `rdb_path`, else CONFIG GET dir + dbfilename."""
    if job.rdb_path:
        return job.rdb_path
    try:
        directory = conn.config_get("dir").get("dir")
        name = conn.config_get("dbfilename").get("dbfilename")
    except redis.ResponseError as exc:
        raise StepError(
            "locate",
            f"CONFIG GET is unavailable ({' '.join(str(exc).split())}): set rdb_path in the job",
            host=host_label(job),
        ) from None
    if not directory or not name:
        raise StepError("locate", "CONFIG GET dir/dbfilename returned nothing: set rdb_path", host=host_label(job))
    return f"{directory.rstrip('/')}/{name}"


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
    """rsync of one file into the staging mirror, building the new copy in `temp_dir` (see backupd.follow).

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


# ---------------------------------------------------------------- 4. verify + stream


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
    core while we copy, instead of reading the file again afterwards."""

    def __init__(self, tool: str) -> None:
        self.proc = subprocess.Popen(
            check_rdb_argv(tool, Path("/dev/stdin")),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=drain_lines, args=(self.proc.stdout, self._lines), daemon=True)
        self._reader.start()
        self._open = True

    def feed(self, data: bytes) -> None:
        if not self._open:
            return
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:  # it stopped reading (unsupported version, or an error it will report)
            self._open = False

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._open = False
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=CHECK_RDB_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.abort()
            raise StepError("redis-check-rdb", f"no verdict after {CHECK_RDB_TIMEOUT}s") from None
        self._reader.join(timeout=5)
        return parse_check_rdb("\n".join(self._lines), self.proc.returncode)

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait()
        self._reader.join(timeout=5)


class RdbPass:
    """One pass over the RDB's bytes: pipeline (zstd + sha256 + our RDB check) and redis-check-rdb."""

    def __init__(self, ctx: DumpContext) -> None:
        tool = shutil.which("redis-check-rdb")
        self.writer = ctx.artifact("dump", "redis-rdb", ".rdb", RdbChecker())
        self.check_rdb: CheckRdbFeed | None = None
        try:
            self.check_rdb = CheckRdbFeed(tool) if tool is not None else None
        except BaseException:
            self.writer.abort()
            raise

    def feed(self, data: bytes) -> None:
        self.writer.write(data)
        if self.check_rdb is not None:
            self.check_rdb.feed(data)

    def finish(self) -> tuple[ArtifactResult, dict[str, Any] | None]:
        try:
            check = self.check_rdb.finish() if self.check_rdb is not None else None
            return self.writer.close(), check
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.writer.abort()
        if self.check_rdb is not None:
            self.check_rdb.abort()


def stream_staged(ctx: DumpContext, staged: Path) -> tuple[ArtifactResult, dict[str, Any] | None]:
    """Second pass over the staged copy (used when the copy could not be followed as it was written)."""
    rdb = RdbPass(ctx)
    try:
        fd = os.open(staged, os.O_RDONLY)
        try:
            while data := os.read(fd, 1 << 20):
                rdb.feed(data)
        finally:
            os.close(fd)
    except BaseException:
        rdb.abort()
        raise
    return rdb.finish()


@dataclass
class Copied:
    state: FileState
    rsync: dict[str, str]
    artifact: ArtifactResult
    check_rdb: dict[str, Any] | None
    followed: bool  # the pass overlapped the copy (False: a second pass over the staged file)


def _rsync_following(
    probe: FileProbe, path: str, ctx: DumpContext, dest: Path
) -> tuple[int, str, list[str], RdbPass, bool]:
    """Run rsync into `dest` while one RdbPass reads the file it is writing; (rc, stdout, stderr, pass, followed)."""
    temp_dir = dest.parent / ".rsync-tmp"
    shutil.rmtree(temp_dir, ignore_errors=True)
    ensure_private_dir(temp_dir)
    err: collections.deque[str] = collections.deque(maxlen=50)
    with tempfile.TemporaryFile(dir=ctx.tmp_dir) as out:
        proc = subprocess.Popen(
            rsync_file_argv(probe.ssh, path, dest, temp_dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        drainer = threading.Thread(target=drain_lines, args=(proc.stderr, err), daemon=True)
        drainer.start()
        rdb: RdbPass | None = None
        try:
            rdb = RdbPass(ctx)
            followed = follow(temp_dir, proc, rdb.feed)
            rc = proc.wait()
            drainer.join(timeout=5)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if rdb is not None:
                rdb.abort()
            raise
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    return rc, stdout, list(err), rdb, rc == 0 and is_destination(followed, dest)


def copy_and_stream(
    probe: FileProbe, path: str, ctx: DumpContext, dest: Path, first: FileState | None = None
) -> Copied:
    """rsync the file into the mirror and stream it into the artifact in the same pass; if `stat` shows the
    source changed during the copy, retry once, then fail. `first`: a stat just taken (no need to repeat it)."""
    for attempt in (1, 2):
        before = first if first is not None and attempt == 1 else probe.stat(path)
        ctx.events.event("step", step="rsync", host=probe.host, path=path, bytes=before.size)
        rc, stdout, err, rdb, followed = _rsync_following(probe, path, ctx, dest)
        try:
            if rc != 0:
                lines = [x for x in err if x.strip() and not x.startswith("rsync error:")]
                raise StepError("rsync", f"rsync exited {rc}: {last_line(lines)}", host=probe.host)
            after = probe.stat(path)
            changed = (before.size, before.mtime, before.inode) != (after.size, after.mtime, after.inode)
            if changed and attempt == 2:
                raise StepError(
                    "rsync", f"{path} changed during the copy twice (size/mtime/inode moved)", host=probe.host
                )
            staged = dest.stat().st_size
            if not changed and staged != after.size:
                raise StepError(
                    "rsync", f"staged copy has {staged} bytes, {path} has {after.size}", host=probe.host
                )
        except BaseException:
            rdb.abort()
            raise
        if changed:
            rdb.abort()
            ctx.events.event("warning", step="rsync", host=probe.host, message=f"{path} changed during copy")
            continue
        if followed:
            art, check_rdb = rdb.finish()
        else:
            rdb.abort()
            ctx.events.event("step", step="verify", host=probe.host, path=str(dest), message="second pass")
            art, check_rdb = stream_staged(ctx, dest)
        return Copied(after, _rsync_stats(stdout), art, check_rdb, followed)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- reach and dump


def reach_redis(job: RedisJob) -> str:
    """check-config --connect: PING and the role, without saving anything."""
    try:
        with client(job, timeout=10.0) as conn:
            conn.ping()
            info = conn.info("replication")
            version = conn.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        raise redis_error(exc, job, "connect") from None
    role = info.get("role", "?")
    link = f", link {info.get('master_link_status', '?')}" if role == "slave" else ""
    return f"redis {host_label(job)} {version} role {role}{link}"


def _keyspace(conn: redis.Redis) -> dict[str, Any]:
    return {str(db): dict(v) for db, v in conn.info("keyspace").items()}


def _fresh_dump(
    job: RedisJob, ctx: DumpContext
) -> tuple[str, SaveResult | None, dict[str, Any], dict[str, Any]]:
    """Steps 1-2 over the Redis protocol: health gate, locate, BGSAVE (when asked), health again, keyspace."""
    host = host_label(job)
    step = "connect"
    try:
        with client(job) as conn:
            conn.ping()
            step = "health"
            ctx.events.event("step", step="health", host=host)
            info = health_gate(conn, job)
            path = locate(conn, job)
            save: SaveResult | None = None
            if job.bgsave:
                step = "bgsave"
                ctx.events.event("step", step="bgsave", host=host)
                save = fresh_bgsave(conn, job, float(job.bgsave_timeout))
                step = "health"
                info = health_gate(conn, job)  # the link may have dropped while we saved
            return path, save, info, _keyspace(conn)
    except redis.RedisError as exc:
        raise redis_error(exc, job, step) from None


def dump_rdb(job: RedisJob, ctx: DumpContext) -> dict[str, Any]:
    host = host_label(job)
    with FileProbe(job.ssh) as probe:  # the SSH handshake runs while we talk to Redis
        path, save, info, keyspace = _fresh_dump(job, ctx)
        staged = ensure_private_dir(ctx.staging_dir / "redis") / STAGED_NAME
        first: FileState | None = None
        if not job.bgsave:
            first = probe.stat(path)
            if first.now - first.mtime > job.max_age:
                raise StepError(
                    "freshness",
                    f"{path} is {first.now - first.mtime}s old, older than max_age {job.max_age}s (bgsave = false)",
                    host=probe.host,
                )
        copied = copy_and_stream(probe, path, ctx, staged, first)
    state, rsync_stats, art, check_rdb = copied.state, copied.rsync, copied.artifact, copied.check_rdb
    result = art.check
    assert result is not None
    if not result.ok:
        ctx.add(art)
        raise StepError("verify", f"dump.rdb: {result.errors[0]}", host=host)
    ctime = result.facts.get("ctime")
    if save is not None and isinstance(ctime, int) and ctime < save.requested_at:
        ctx.add(art)
        raise StepError(
            "verify",
            f"{path} was saved at {ctime}, before our BGSAVE at {save.requested_at}: stale file "
            "(is rdb_path the file this server writes?)",
            host=host,
        )
    # Key counts go in the artifact's facts (drills compare against them); its stats are the checker's own,
    # which `backupd verify` recomputes from the stored file and must match exactly.
    keys_hint = sum(result.stats.get("keys_hint", {}).values())
    if check_rdb is not None and "unsupported" not in check_rdb:
        if not check_rdb["ok"]:
            ctx.add(art)
            raise StepError("redis-check-rdb", f"dump.rdb: {check_rdb.get('error')}", host=host)
        result.facts["keys"] = check_rdb.get("keys", 0)
        result.facts["keys_source"] = "redis-check-rdb"
        result.facts["check_rdb_keys"] = check_rdb.get("keys", 0)
        result.facts["check_rdb_expires"] = check_rdb.get("expires", 0)
        result.facts["check_rdb_already_expired"] = check_rdb.get("already_expired", 0)
    elif keys_hint or not keyspace:
        result.facts["keys"] = keys_hint
        result.facts["keys_source"] = "rdb-header"
    else:
        result.facts["keys"] = sum(int(v.get("keys", 0)) for v in keyspace.values())
        result.facts["keys_source"] = "info-keyspace"
    ctx.add(art)

    facts: dict[str, Any] = {
        "host": host,
        "role": info.get("role"),
        "redis_version": info.get("redis_version"),
        "master_link_status": info.get("master_link_status"),
        "master_repl_offset": info.get("master_repl_offset"),
        "slave_repl_offset": info.get("slave_repl_offset"),
        "keyspace": keyspace,
        "rdb_path": path,
        "file_host": probe.host,
        "file_bytes": state.size,
        "file_mtime": state.mtime,
        "rsync": rsync_stats,
        "copy_followed": copied.followed,
        "redis_check_rdb": check_rdb if check_rdb is not None else "not installed",
    }
    if save is not None:
        facts.update(
            lastsave_before=save.lastsave_before,
            lastsave=save.lastsave,
            bgsave_seconds=round(save.seconds, 3),
            bgsave_scheduled=save.scheduled,
            bgsave_waited_for_running=save.waited_for_running,
        )
    else:
        facts.update(lastsave=int(info.get("rdb_last_save_time", 0)), file_age=state.now - state.mtime)
    return facts
