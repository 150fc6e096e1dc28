"""The one process helper: start a tool (never through a shell), pump its stdout into an artifact or feed its
stdin, or run it beside us (`started`: followed, or fed as we go), drain its stderr into a bounded tail (and to
an optional per-line callback), and kill it by the PID we started when we are interrupted. Also the tool finder."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from backupd.engine.compression import iter_chunks, open_decompressed, open_stored, stored_codec
from backupd.engine.pipeline import ArtifactWriter, pump
from backupd.errors import StepError

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


@dataclass
class CommandResult:
    returncode: int
    stderr: list[str]


def drain_lines(
    stream: IO[bytes], sink: collections.deque[str], on_line: Callable[[str], None] | None = None
) -> None:
    """Read a process's stderr to EOF into a bounded deque (run in a thread so the pipe never fills).

    `on_line` sees every non-empty line, for tools whose stderr carries more than errors (mongodump's
    per-collection counts), so the caller keeps what it needs without the tail growing."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            sink.append(line)
            if on_line is not None:
                on_line(line)


def stream_command(
    argv: Sequence[str],
    writer: ArtifactWriter,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> CommandResult:
    """Run argv (never through a shell), pump its stdout into `writer`; kill it if we are interrupted.

    `on_stderr` is called with each stderr line (from the draining thread) besides the tail."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    with contextlib.suppress(OSError):  # a bigger pipe means fewer wake-ups; not fatal if refused
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    tail: collections.deque[str] = collections.deque(maxlen=50)
    drainer = threading.Thread(target=drain_lines, args=(proc.stderr, tail, on_stderr), daemon=True)
    drainer.start()
    fd = proc.stdout.fileno()
    try:
        pump(lambda n: os.read(fd, n), writer)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        drainer.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    return CommandResult(rc, list(tail))


def run_capture(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A short helper command (listing databases, rsync, one SQL statement on stdin): output captured as text.

    On timeout the child is killed (by subprocess, by its PID) and TimeoutExpired raised."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL if input is None else None,
        input=input,
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # a tool's message in another encoding must not turn into a traceback
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=False,
    )


class Started:
    """A child that runs beside us (see `started()`): the caller polls or waits for it, or writes its stdin."""

    def __init__(self, proc: subprocess.Popen[bytes], tail: collections.deque[str], drainer: threading.Thread) -> None:
        self.proc = proc
        self._tail = tail
        self._drainer = drainer
        self._writable = proc.stdin is not None

    @property
    def tail(self) -> list[str]:
        """The last lines of its stderr (and of its stdout, when that goes to the tail too)."""
        return list(self._tail)

    def write(self, data: bytes) -> bool:
        """Feed its stdin; False from the moment it stopped reading (its output says why), never an error."""
        if not self._writable:
            return False
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:
            self._writable = False
        return self._writable

    def wait(self, timeout: float | None = None) -> int:
        """Close its stdin (end of input), wait for it to exit and for its output to be drained.

        subprocess.TimeoutExpired propagates; the `started()` block then kills it."""
        self._close_stdin()
        rc = self.proc.wait(timeout=timeout)
        self._drainer.join(timeout=5)
        return rc

    def _close_stdin(self) -> None:
        self._writable = False
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.proc.stdin.close()


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    *,
    stdin: bool = False,
    stdout: IO[bytes] | Literal["tail"] | None = None,
    tail_lines: int = 50,
    env: Mapping[str, str] | None = None,
) -> Iterator[Started]:
    """Start argv (never through a shell) to run beside the caller: rsync we follow while it writes, a checker
    fed the bytes we copy (`stdin=True`). stderr is drained into a tail of `tail_lines`; `stdout` goes to a file,
    into the same tail ("tail"), or nowhere. When the block ends, a child still running is killed by its PID
    (on an exception, or when the caller did not wait for it): nothing we start outlives the block."""
    out: IO[bytes] | int = subprocess.DEVNULL if stdout is None else subprocess.PIPE if stdout == "tail" else stdout
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT if stdout == "tail" else subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    stream = proc.stdout if stdout == "tail" else proc.stderr
    assert stream is not None
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    drainer = threading.Thread(target=drain_lines, args=(stream, tail), daemon=True)
    drainer.start()
    child = Started(proc, tail, drainer)
    try:
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
        child._close_stdin()
        proc.wait()
        drainer.join(timeout=5)
        stream.close()


def describe_exit(returncode: int) -> str:
    """ "exited 2" or "killed by SIGKILL": a negative return code is the signal that ended the process."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited {returncode}"


def last_line(lines: Sequence[str] | str, default: str = "no error output") -> str:
    if isinstance(lines, str):
        lines = [x for x in lines.splitlines() if x.strip()]
    return lines[-1].strip() if lines else default


def find_tool(names: Sequence[str], what: str, step: str = "dump") -> str:
    """The first of `names` on PATH (e.g. mariadb-dump, then mysqldump); one line naming them all if none is."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise StepError(step, f"{what}: none of {', '.join(names)} found on PATH")


IOPRIO_CLASS_IDLE = 3
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # the syscall's number; no Python wrapper exists


def lower_priority() -> None:
    """Nice 19 and the idle I/O class for this process (a scheduled re-verification): the jobs' own runs keep
    the disk and the CPU. Best effort: where either is refused, the work still runs."""
    with contextlib.suppress(OSError):
        os.nice(19 - os.nice(0))
    number = _IOPRIO_SET.get(os.uname().machine)
    if number is None:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(number, 1, 0, IOPRIO_CLASS_IDLE << 13)  # IOPRIO_WHO_PROCESS, this process


# ------------------------------------------------------------------ feeding a stored artifact into a tool


@dataclass
class FedResult:
    """How a tool fed a stored artifact ended: every process's exit code and stderr tail (the decompressor's
    first when there is one, the tool's last), and whether every byte was written (False: the tool left)."""

    returncodes: list[int]
    tails: list[list[str]]
    fed: bool

    @property
    def ok(self) -> bool:
        return self.fed and not any(self.returncodes)

    @property
    def tool_tail(self) -> list[str]:
        return self.tails[-1] if self.tails else []


def _decompressor(path: Path | Iterable[bytes]) -> list[str] | None:
    """`zstd -dc` / `gzip -dc` when installed: decompressing in its own process, straight into the tool's
    pipe, keeps the (uncompressed, several times larger) data out of Python. None for chunks we are given."""
    if not isinstance(path, Path):
        return None
    algo = stored_codec(path)  # an encrypted artifact's codec is that of its decrypted content
    argv = {"zstd": ["zstd", "-dcq"], "gzip": ["gzip", "-dc"]}.get(algo)
    return argv if argv is not None and shutil.which(argv[0]) else None


def _feed(dest: IO[bytes], chunks: Iterator[bytes], progress: Callable[[int], None], scale: float) -> bool:
    """Write every chunk into `dest`; False if the reader went away (its stderr says why)."""
    try:
        for chunk in chunks:
            dest.write(chunk)
            progress(int(len(chunk) * scale))
    except BrokenPipeError:
        return False
    finally:
        with contextlib.suppress(BrokenPipeError):
            dest.close()
    return True


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """On any exception: every process we started, killed by its PID and reaped."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _release(procs: Sequence[subprocess.Popen[bytes]], drainers: Sequence[threading.Thread]) -> None:
    """However a feed ends: the stderr drainers joined, the stderr pipes closed."""
    for t in drainers:
        t.join(timeout=5)
    for p in procs:
        if p.stderr is not None:
            p.stderr.close()


def feed_command(
    argv: Sequence[str],
    source: Path | Iterable[bytes],
    env: Mapping[str, str] | None = None,
    progress: Callable[[int], None] = lambda n: None,
    expansion: float = 1.0,
    on_stderr: Callable[[str], None] | None = None,
) -> FedResult:
    """Stream a stored artifact, decrypted and decompressed, into `argv`'s stdin (a restore's client tool).

    Decompression runs in a `zstd -dc` process when installed (the tool reads its stdout), else in Python.
    `source` may instead be the chunks to feed as they are (a stream the caller opened). stderr of every
    process is drained into a tail (the tool's lines also to `on_stderr`); on any exception every process we
    started is killed by its PID. `expansion` (raw/stored bytes) scales progress when the stored bytes are
    what we feed."""
    dec_argv = _decompressor(source)
    child_env = dict(env) if env is not None else None
    procs: list[subprocess.Popen[bytes]] = []
    drainers: list[threading.Thread] = []
    tails: list[collections.deque[str]] = []
    try:
        if dec_argv is not None:
            dec = subprocess.Popen(dec_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(dec)
            tool = subprocess.Popen(
                list(argv), stdin=dec.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env
            )
            assert dec.stdout is not None
            dec.stdout.close()  # the tool holds the read end now
        else:
            dec = None
            tool = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env
            )
        procs.append(tool)
        feed_to = dec if dec is not None else tool
        assert feed_to.stdin is not None
        with contextlib.suppress(OSError):  # fewer wake-ups for the reader; not fatal if refused
            fcntl.fcntl(feed_to.stdin.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        for p in procs:
            tail: collections.deque[str] = collections.deque(maxlen=50)
            tails.append(tail)
            on_line = on_stderr if p is tool else None
            drainers.append(threading.Thread(target=drain_lines, args=(p.stderr, tail, on_line), daemon=True))
        for t in drainers:
            t.start()
        if not isinstance(source, Path):
            fed = _feed(feed_to.stdin, iter(source), progress, 1.0)
        elif dec is not None:
            with open_stored(source) as fh:  # decrypted on the fly if it is encrypted
                fed = _feed(feed_to.stdin, iter_chunks(fh), progress, expansion)
        else:
            _, stream = open_decompressed(source)
            with stream:
                fed = _feed(feed_to.stdin, iter_chunks(stream), progress, 1.0)
        rcs = [p.wait() for p in procs]
    except BaseException:
        _kill_all(procs)
        raise
    finally:
        _release(procs, drainers)
    return FedResult(rcs, [list(t) for t in tails], fed)


def feed_chain(
    argvs: Sequence[Sequence[str]], chunks: Iterator[bytes], env: Mapping[str, str] | None = None
) -> FedResult:
    """Stream `chunks` into the first command of a pipeline (`a | b | ...`, stdout to the next one's stdin,
    the last one's to /dev/null): a replay's `mariadb-binlog - | mariadb`. Same tails and kills as above."""
    child_env = dict(env) if env is not None else None
    procs: list[subprocess.Popen[bytes]] = []
    drainers: list[threading.Thread] = []
    tails: list[collections.deque[str]] = []
    try:
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            stdin = procs[-1].stdout if procs else subprocess.PIPE
            out = subprocess.DEVNULL if last else subprocess.PIPE
            p = subprocess.Popen(list(argv), stdin=stdin, stdout=out, stderr=subprocess.PIPE, env=child_env)
            if procs and procs[-1].stdout is not None:
                procs[-1].stdout.close()  # the next process holds the read end now
            procs.append(p)
        first = procs[0]
        assert first.stdin is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(first.stdin.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        for p in procs:
            tail: collections.deque[str] = collections.deque(maxlen=50)
            tails.append(tail)
            drainers.append(threading.Thread(target=drain_lines, args=(p.stderr, tail), daemon=True))
        for t in drainers:
            t.start()
        fed = _feed(first.stdin, chunks, lambda n: None, 1.0)
        rcs = [p.wait() for p in procs]
    except BaseException:
        _kill_all(procs)
        raise
    finally:
        _release(procs, drainers)
    return FedResult(rcs, [list(t) for t in tails], fed)
