"""backupd.follow against a real rsync: the bytes read while rsync writes are exactly the copy's bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from backupd.engine.follow import Followed, follow, is_destination


def rsync(src: Path, dest: Path, temp: Path, *extra: str) -> subprocess.Popen[bytes]:
    temp.mkdir(exist_ok=True)
    argv = ["rsync", "--ignore-times", "--no-whole-file", f"--temp-dir={temp}", *extra, "--", str(src), str(dest)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def test_follows_a_slow_copy_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "src.rdb"
    src.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "mirror" / "dump.rdb"
    dest.parent.mkdir()
    h = hashlib.sha256()
    proc = rsync(src, dest, tmp_path / "tmp", "--bwlimit=4096")  # ~0.75 s: rsync is surely still writing
    followed = follow(tmp_path / "tmp", proc, h.update)
    assert proc.wait() == 0
    assert followed is not None and is_destination(followed, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert h.hexdigest() == hashlib.sha256(dest.read_bytes()).hexdigest()


def test_delta_copy_against_previous_mirror_is_followed_in_order(tmp_path: Path) -> None:
    """Blocks matched in the previous copy are written in file order too, so the stream is the new file."""
    old = os.urandom(2 << 20)
    src = tmp_path / "src.rdb"
    src.write_bytes(b"NEWHEAD" * 1000 + old + os.urandom(1 << 20))
    dest = tmp_path / "dump.rdb"
    dest.write_bytes(old)
    chunks: list[bytes] = []
    proc = rsync(src, dest, tmp_path / "tmp", "--bwlimit=2048")
    followed = follow(tmp_path / "tmp", proc, chunks.append)
    assert proc.wait() == 0 and is_destination(followed, dest)
    assert b"".join(chunks) == src.read_bytes() == dest.read_bytes()


def test_nothing_to_follow_when_rsync_ends_without_a_temp_file(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(["rsync", "--", str(tmp_path / "missing"), str(tmp_path / "d")], stderr=subprocess.DEVNULL)
    assert follow(tmp_path / "tmp", proc, lambda b: None) is None
    assert proc.wait() != 0


def test_followed_bytes_of_another_inode_or_size_are_not_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "dump.rdb"
    dest.write_bytes(b"x" * 10)
    st = dest.stat()
    assert is_destination(Followed(st.st_ino, 10), dest)
    assert not is_destination(Followed(st.st_ino + 1, 10), dest)  # rsync redid the file into a new temp
    assert not is_destination(Followed(st.st_ino, 9), dest)  # we missed bytes
    assert not is_destination(None, dest)
    assert not is_destination(Followed(st.st_ino, 10), tmp_path / "gone")
