"""procs.started: a child beside us is fed, drained into a tail, and never outlives its block."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backupd.engine.procs import started


def gone(pid: int) -> bool:
    """True once `pid` is no process of ours any more (reaped: no zombie left either)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_fed_child_reads_everything_and_its_output_is_the_tail() -> None:
    code = "import sys; data = sys.stdin.buffer.read(); print(len(data)); print('to stderr', file=sys.stderr)"
    with started([sys.executable, "-c", code], stdin=True, stdout="tail") as child:
        for _ in range(64):
            assert child.write(b"x" * 65536)
        rc = child.wait(timeout=30)
    assert rc == 0
    assert sorted(child.tail) == [str(64 * 65536), "to stderr"]


def test_writing_to_a_child_that_left_is_false_not_an_error() -> None:
    with started([sys.executable, "-c", "import sys; print('bye', file=sys.stderr)"], stdin=True) as child:
        child.proc.wait(timeout=30)
        results = [child.write(b"y" * 65536) for _ in range(8)]
        assert child.wait(timeout=30) == 0
    assert results[-1] is False and child.tail == ["bye"]


def test_stdout_to_a_file_and_the_stderr_tail_is_bounded(tmp_path: Path) -> None:
    code = "import sys\nprint('out')\nfor i in range(100): print(i, file=sys.stderr)"
    with tempfile.TemporaryFile(dir=tmp_path) as out:
        with started([sys.executable, "-c", code], stdout=out, tail_lines=5) as child:
            assert child.wait(timeout=30) == 0
        out.seek(0)
        assert out.read() == b"out\n"
    assert child.tail == ["95", "96", "97", "98", "99"]


def test_a_child_still_running_when_the_block_raises_is_killed_by_its_pid() -> None:
    with pytest.raises(RuntimeError), started([sys.executable, "-c", "import time; time.sleep(60)"]) as child:
        pid = child.proc.pid
        raise RuntimeError("the caller failed")
    assert child.proc.returncode is not None and child.proc.returncode < 0
    assert gone(pid)


def test_a_timeout_propagates_and_the_block_kills_the_child() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(subprocess.TimeoutExpired), started(argv, stdin=True) as child:
        child.wait(timeout=0.2)
    assert child.proc.returncode is not None and child.proc.returncode < 0
