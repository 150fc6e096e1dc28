"""Read the file rsync is writing while it writes it, so the copy and our pass over the bytes overlap.

rsync's receiver builds the new file sequentially (literal data and blocks matched in the previous copy alike)
in a temporary file, then renames it over the destination. With `--temp-dir` pointing at an empty directory
that temporary file is the only entry there, so we can open it and read up to its current size while rsync
appends. When rsync exits, the bytes we read are the destination's bytes if and only if the inode we followed
is the one now at the destination and we read all of it; anything else (rsync redid the file after a checksum
mismatch, the file was too small to catch before the rename) returns None and the caller reads the
destination in a second pass instead. Correctness never depends on the follow succeeding.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
IDLE_MIN = 0.001  # seconds between polls when no new bytes were there; doubles up to IDLE_MAX
IDLE_MAX = 0.02


@dataclass(frozen=True)
class Followed:
    inode: int
    size: int


def _open_temp(directory: Path, proc: subprocess.Popen[bytes]) -> int | None:
    """Open the one temporary file rsync creates in `directory`; None if rsync ended without us seeing one."""
    idle = IDLE_MIN
    while True:
        for name in os.listdir(directory):
            try:
                return os.open(directory / name, os.O_RDONLY)
            except FileNotFoundError:  # renamed away between listdir and open: too late to follow
                return None
        if proc.poll() is not None:
            return None
        time.sleep(idle)
        idle = min(idle * 2, IDLE_MAX)


def follow(directory: Path, proc: subprocess.Popen[bytes], sink: Callable[[bytes], None]) -> Followed | None:
    """Feed `sink` every byte of rsync's temporary file in `directory` until `proc` exits.

    Returns what was followed (inode and bytes read), or None when there was nothing to follow; the caller
    decides whether that is the destination file (see the module docstring).
    """
    fd = _open_temp(directory, proc)
    if fd is None:
        return None
    total = 0
    idle = IDLE_MIN
    try:
        while True:
            data = os.read(fd, CHUNK)
            if data:
                sink(data)
                total += len(data)
                idle = IDLE_MIN
                continue
            if proc.poll() is not None:  # rsync is done writing: whatever is left is already in the file
                while data := os.read(fd, CHUNK):
                    sink(data)
                    total += len(data)
                return Followed(os.fstat(fd).st_ino, total)
            time.sleep(idle)
            idle = min(idle * 2, IDLE_MAX)
    finally:
        os.close(fd)


def is_destination(followed: Followed | None, dest: Path) -> bool:
    """True when the followed bytes are exactly the destination's content."""
    if followed is None:
        return False
    try:
        st = dest.stat()
    except FileNotFoundError:
        return False
    return st.st_ino == followed.inode and st.st_size == followed.size
