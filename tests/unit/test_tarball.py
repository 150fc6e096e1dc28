"""TarChecker against archives made by GNU tar (and a few crafted with tarfile), and tree_digest against
the same trees on disk."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from backupd.formats.base import CheckResult
from backupd.formats.tarball import TarChecker, describe, sniff, tree_digest
from tests.conftest import feed_in_chunks

TAR = shutil.which("tar")
needs_tar = pytest.mark.skipif(TAR is None, reason="GNU tar is not installed")
DIGEST_KEYS = ("files", "dirs", "symlinks", "hardlinks", "other", "bytes", "tree_sha256", "unsafe")
LONG_DIR = "wp-content/plugins/" + "/".join(["a-rather-long-plugin-directory-name"] * 3)


def check(data: bytes, chunk: int | None = None) -> CheckResult:
    return feed_in_chunks(TarChecker(), data, chunk)


def digest_of(stats: dict[str, object]) -> dict[str, object]:
    return {k: stats[k] for k in DIGEST_KEYS}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A small WordPress-like tree: config, uploads (binary, not block-aligned), a symlink, a hard link,
    an empty dir and an empty file, odd names, and a path longer than 100 characters."""
    root = tmp_path / "site"
    (root / "wp-content/uploads/2024/03").mkdir(parents=True)
    (root / "wp-content/upgrade").mkdir()  # stays empty
    (root / "wp-config.php").write_text("<?php\ndefine('DB_NAME', 'wp');\n$table_prefix = 'wp_';\n")
    (root / "index.php").write_text("<?php require __DIR__ . '/wp-blog-header.php';\n")
    photo = root / "wp-content/uploads/2024/03/photo.jpg"
    photo.write_bytes(os.urandom(70_001))
    os.link(photo, root / "wp-content/uploads/2024/03/photo-hardlink.jpg")
    (root / "wp-content/uploads/2024/03/empty.txt").write_bytes(b"")
    (root / "wp-content/uploads/2024/03/café menu & prices.pdf").write_bytes(b"%PDF-1.4\n" * 100)
    (root / "latest").symlink_to("wp-content/uploads/2024")
    long_dir = root / LONG_DIR
    long_dir.mkdir(parents=True)
    (long_dir / "plugin-main-file-with-a-long-name.php").write_text("<?php // long path\n")
    assert len(f"./{LONG_DIR}/plugin-main-file-with-a-long-name.php") > 100
    return root


def gnu_tar(root: Path, *extra: str) -> bytes:
    assert TAR is not None
    argv = [TAR, "--sort=name", "--numeric-owner", *extra, "-C", str(root), "-cf", "-", "."]
    return subprocess.run(argv, check=True, capture_output=True, timeout=60).stdout


def extract(data: bytes, dest: Path) -> Path:
    assert TAR is not None
    dest.mkdir()
    subprocess.run([TAR, "-C", str(dest), "-xf", "-"], input=data, check=True, capture_output=True, timeout=60)
    return dest


# -- real GNU tar archives ----------------------------------------------------------------------------------


@needs_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_archive_digest_equals_source_tree(site: Path, tmp_path: Path, fmt: str) -> None:
    data = gnu_tar(site, f"--format={fmt}")
    result = check(data)
    assert result.ok, result.errors
    stats = result.stats
    # 6 files + a second link to photo.jpg; wp-content, uploads, 2024, 03, upgrade, plugins + 3 long ones
    assert (stats["files"], stats["hardlinks"], stats["symlinks"], stats["dirs"]) == (6, 1, 1, 9)
    assert (
        stats["bytes"] == sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink()) - 70_001
    )  # the hard link's bytes are stored once
    assert stats["unsafe"] == [] and result.warnings == []
    assert digest_of(stats) == digest_of(tree_digest(site))
    # what a restore drill does: extract, then compare the tree with the archive
    assert digest_of(tree_digest(extract(data, tmp_path / "restored"))) == digest_of(stats)
    expected_format = {"gnu": "gnu", "pax": "pax", "ustar": "ustar"}[fmt]
    assert expected_format in result.facts["formats"]


@needs_tar
def test_digest_sees_content_and_type_changes(site: Path) -> None:
    before = tree_digest(site)["tree_sha256"]
    (site / "wp-config.php").write_text("<?php\ndefine('DB_NAME', 'other');\n")
    changed = tree_digest(site)["tree_sha256"]
    assert changed != before
    (site / "latest").unlink()
    (site / "latest").mkdir()
    assert tree_digest(site)["tree_sha256"] not in (before, changed)
    assert digest_of(check(gnu_tar(site)).stats) == digest_of(tree_digest(site))


@needs_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_chunk_sizes_give_identical_results(site: Path, fmt: str) -> None:
    data = gnu_tar(site, f"--format={fmt}")
    whole = check(data).to_dict()
    for chunk in (1, 7, 511, 513, 4096):
        assert check(data, chunk).to_dict() == whole, chunk


@needs_tar
def test_truncated_archives_fail(site: Path) -> None:
    data = gnu_tar(site)
    end = len(data.rstrip(b"\0"))  # where the last member's data ends
    for cut in [0, 100, 512, 700, 1024, 5000, 40_000, end, end + 1, end - 1]:
        result = check(data[:cut])
        assert not result.ok, cut
        assert result.errors, cut
    marker = (end + 511) // 512 * 512
    assert check(data[: marker + 512]).errors == ["only one end-of-archive zero block: archive truncated"]
    assert check(data[: marker + 1024]).ok
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        photo = next(m for m in tar.getmembers() if m.size == 70_001)
    assert check(data[: photo.offset_data + 1000]).errors == [f"truncated inside {photo.name!r} (1000 of 70001 bytes)"]
    assert check(data[: photo.offset + 100]).errors == [f"truncated header at offset {photo.offset}"]


@needs_tar
def test_corrupted_header_fails(site: Path) -> None:
    data = bytearray(gnu_tar(site))
    headers = [off for off in range(0, len(data), 512) if data[off + 257 : off + 262] == b"ustar"]
    assert len(headers) > 5
    for off in (headers[0], headers[3]):
        broken = bytearray(data)
        broken[off + 10] ^= 0x01  # a byte of the name
        result = check(bytes(broken))
        assert result.errors == [f"header checksum mismatch at offset {off}"]


@needs_tar
def test_corrupted_content_changes_digest_only(site: Path) -> None:
    data = bytearray(gnu_tar(site))
    original = check(bytes(data)).stats["tree_sha256"]
    pos = data.index(b"DB_NAME")
    data[pos] ^= 0x20
    result = check(bytes(data))
    assert result.ok  # tar has no content checksum; the digest is what catches this
    assert result.stats["tree_sha256"] != original


def test_empty_stream_and_not_a_tar() -> None:
    assert check(b"").errors == ["empty stream: not a tar archive"]
    assert check(b"-- MariaDB dump\n" * 100).errors[0].startswith("header checksum mismatch at offset 0")


# -- crafted archives: GNU long names, pax, unsafe members ---------------------------------------------------


def crafted(fmt: int, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, content: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


def test_gnu_longname_longlink_and_pax_records() -> None:
    long_name = "d/" + "x" * 150 + ".txt"
    long_target = "t/" + "y" * 150
    members = [member(long_name, content=b"hello"), member("link", tarfile.SYMTYPE, link=long_target)]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        result = check(crafted(fmt, members), 3)
        assert result.ok, result.errors
        assert result.stats["files"] == 1 and result.stats["symlinks"] == 1
        assert result.stats["bytes"] == 5
    gnu = check(crafted(tarfile.GNU_FORMAT, members)).stats
    pax = check(crafted(tarfile.PAX_FORMAT, members)).stats
    assert gnu["tree_sha256"] == pax["tree_sha256"]  # same names and content whatever the encoding


def test_pax_size_overrides_header_size() -> None:
    """As for a file over 8 GiB: the ustar header says 0 and a pax record carries the real size."""
    pax_record = b"13 size=1000\n"
    pax = tarfile.TarInfo("./PaxHeaders/big.bin")
    pax.type = tarfile.XHDTYPE
    pax.size = len(pax_record)
    header = tarfile.TarInfo("big.bin")  # size 0
    archive = (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + pax_record.ljust(512, b"\0")
        + header.tobuf(tarfile.USTAR_FORMAT)
        + b"z" * 1000
        + bytes(24)
        + bytes(1024)
    )
    result = check(archive)
    assert result.ok, result.errors
    assert result.stats["bytes"] == 1000 and result.stats["files"] == 1


def test_outward_symlinks_are_data_and_counted() -> None:
    """Symlinks are restored verbatim, whatever they point at: the check accepts them, lists them as
    pointing outside (their content is not in the backup) and counts them in the facts."""
    data = crafted(
        tarfile.GNU_FORMAT,
        [
            member("uploads/shell", tarfile.SYMTYPE, link="../../../etc/passwd"),
            member("uploads/abs", tarfile.SYMTYPE, link="/etc/shadow"),
            member("uploads/fine", tarfile.SYMTYPE, link="../uploads"),
        ],
    )
    result = check(data)
    assert result.ok, result.errors
    assert result.stats["unsafe"] == [
        "symlink points outside the archive: uploads/shell -> ../../../etc/passwd",
        "symlink points outside the archive: uploads/abs -> /etc/shadow",
    ]
    assert result.facts["links_outside"] == 2


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([member("/etc/cron.d/evil", content=b"* * * * * root sh\n")], "absolute path: /etc/cron.d/evil"),
        ([member("ok/../../escape.php", content=b"<?php")], "'..' in path: ok/../../escape.php"),
        ([member("x", tarfile.LNKTYPE, link="../../etc/passwd")], "hard link points outside the archive"),
        ([member("fifo", tarfile.FIFOTYPE)], "device, fifo or socket: fifo"),
        (
            [member("up", tarfile.SYMTYPE, link="/var/www"), member("up/shell.php", content=b"<?php")],
            "path goes through the symlink up: up/shell.php",
        ),
    ],
)
def test_members_restore_would_refuse_fail_the_check(members: list[tarfile.TarInfo], why: str) -> None:
    """The check at backup time applies restore's own rule: what restore refuses is never verified."""
    result = check(crafted(tarfile.GNU_FORMAT, members))
    assert not result.ok and why in result.errors[0] and "restore would refuse" in result.errors[0]


def test_lone_zero_block_followed_by_member_fails() -> None:
    first = crafted(tarfile.USTAR_FORMAT, [member("a", content=b"1")])
    body = first[:1024]  # header + data of "a", without the end marker
    data = body + bytes(512) + crafted(tarfile.USTAR_FORMAT, [member("b", content=b"2")])
    assert check(data).errors == ["lone zero block at offset 1024 followed by a header"]


def test_sniff(tmp_path: Path) -> None:
    data = crafted(tarfile.USTAR_FORMAT, [member("a", content=b"1")])
    assert sniff(data[:512])
    assert sniff(crafted(tarfile.GNU_FORMAT, [member("a", content=b"1")]))
    v7 = bytearray(data[:512])
    v7[257:265] = bytes(8)
    v7[148:156] = b"        "
    v7[148:156] = f"{sum(v7):06o}\0 ".encode()
    assert sniff(bytes(v7))
    assert not sniff(bytes(512))
    assert not sniff(b"-- MariaDB dump 10.19" + bytes(600))
    assert not sniff(data[:100])


def test_describe(tmp_path: Path) -> None:
    data = crafted(tarfile.PAX_FORMAT, [member("a/b.txt", content=b"hello"), member("a", tarfile.DIRTYPE)])
    text = "\n".join(describe(check(data)))
    assert "1 files (5 bytes), 1 directories" in text and "status: OK" in text
    assert "tree sha256: " in text
    assert "FAILED" in "\n".join(describe(check(data[:600])))
