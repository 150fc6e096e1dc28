"""Filesystem helpers every layer uses: private directories and files (0700/0600 from the first byte), fsync.

They live here, below the store and the sources, so a source that writes an option file or a staging
directory does not import the store.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """mkdir -p with 0700 on every directory we create (never loosening an existing one)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another run (the daemon starts several at once) made it first
            if not d.is_dir():
                raise
            continue
        os.chmod(d, DIR_MODE)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Write, fsync, 0600: used for manifests and option files holding secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes) -> None:
    """Write 0600 under a temp name beside `path`, fsync, then rename over it: a reader (or a crash) sees
    the old content or the new one, never half of it."""
    tmp = path.with_name(f".tmp-{path.name}")
    write_private_file(tmp, data)
    os.replace(tmp, path)
