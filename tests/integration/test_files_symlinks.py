"""Symlinks are data: a site laid out like Debian's WordPress package (absolute and outward symlinks) is
backed up, verified, restored verbatim and drilled; what lies outside `source` is named in the manifest and
in `status`, `follow_links` backs a linked uploads directory up as a directory, devices and fifos are left
out and listed; a member that would be written through a symlink is refused by the check and by restore."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from backupd.errors import StepError
from backupd.lab.content import write_config
from backupd.sources.files.extract import extract_tar
from tests.conftest import run_cli


def debian_like_site(tmp_path: Path) -> tuple[Path, Path]:
    site = tmp_path / "usr-share-wordpress"
    (site / "wp-includes" / "js").mkdir(parents=True)
    (site / "wp-includes" / "certificates").mkdir(parents=True)
    (site / "wp-content").mkdir()
    (site / "index.php").write_text("<?php require 'wp-blog-header.php';\n")
    (site / "wp-config.php").write_text("<?php\ndefine('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');\n")
    os.symlink("/etc/wordpress/htaccess", site / ".htaccess")
    os.symlink("/etc/ssl/certs/ca-certificates.crt", site / "wp-includes" / "certificates" / "ca-bundle.crt")
    os.symlink("../../../javascript/jquery/jquery.js", site / "wp-includes" / "js" / "jquery.js")
    uploads = tmp_path / "bigdisk" / "uploads"
    (uploads / "2026" / "11").mkdir(parents=True)
    (uploads / "2026" / "11" / "photo.jpg").write_bytes(os.urandom(4096))
    os.symlink(uploads, site / "wp-content" / "uploads")
    os.mkfifo(site / "wp-content" / "debug.pipe")
    return site, uploads


def test_debian_layout_backs_up_verifies_restores_and_drills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, uploads = debian_like_site(tmp_path)
    job = {"type": "files", "source": str(site), "schedule": "@daily", "follow_links": ["wp-content/uploads"]}
    cfg = str(write_config(tmp_path / "etc", {"site": job}))
    rc, _, err = run_cli(capsys, "--config", cfg, "run", "site")
    assert rc == 0, err
    rc, out, _ = run_cli(capsys, "--config", cfg, "list", "--json")
    [row] = json.loads(out)
    assert row["verified"] is True
    rc, out, _ = run_cli(capsys, "--config", cfg, "show", row["backup_id"], "--json")
    manifest = json.loads(out)["manifest"]
    files = manifest["source"]["files"]
    assert files["links_outside"] == 3 and files["skipped_special"] == ["wp-content/debug.pipe"]
    assert any("3 symlink(s) point outside source" in w for w in manifest["warnings"])
    assert any("WP_CONTENT_DIR" in w and "/var/lib/wordpress/wp-content" in w for w in manifest["warnings"])
    assert any("debug.pipe" in w for w in manifest["warnings"])
    rc, out, _ = run_cli(capsys, "--config", cfg, "status")
    assert "site: warning: 3 symlink(s) point outside source" in out

    rc, _, err = run_cli(capsys, "--config", cfg, "verify")
    assert rc == 0, err
    dest = tmp_path / "restored"
    rc, _, err = run_cli(capsys, "--config", cfg, "restore", "site", "--to", str(dest))
    assert rc == 0, err
    assert os.readlink(dest / ".htaccess") == "/etc/wordpress/htaccess"
    assert os.readlink(dest / "wp-includes" / "js" / "jquery.js") == "../../../javascript/jquery/jquery.js"
    assert os.readlink(dest / "wp-includes" / "certificates" / "ca-bundle.crt") == "/etc/ssl/certs/ca-certificates.crt"
    restored_upload = dest / "wp-content" / "uploads" / "2026" / "11" / "photo.jpg"
    assert not (dest / "wp-content" / "uploads").is_symlink(), "a followed link is backed up as a directory"
    assert restored_upload.read_bytes() == (uploads / "2026" / "11" / "photo.jpg").read_bytes()
    assert not (dest / "wp-content" / "debug.pipe").exists()

    rc, out, err = run_cli(capsys, "--config", cfg, "drill", "--json")
    assert rc == 0, err
    [report] = json.loads(out)
    assert report["outcome"] == "ok" and any(c["check"] == "files symlinks" and c["ok"] for c in report["checks"])


def test_a_member_written_through_an_earlier_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        link = tarfile.TarInfo("./up")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(link)
        payload = tarfile.TarInfo("./up/shell.php")
        payload.size = 5
        tf.addfile(payload, io.BytesIO(b"<?php"))
    tar = tmp_path / "evil.tar"
    tar.write_bytes(buf.getvalue())
    with pytest.raises(StepError, match="path goes through the symlink up"):
        extract_tar(tar, tmp_path / "dest", yes=False)
    assert list(outside.iterdir()) == []


def test_a_wp_config_symlinked_out_of_the_tree_is_warned(tmp_path: Path) -> None:
    from backupd.sources.files.sync import outside_content_warnings

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.symlink("/etc/wordpress/config-example.net.php", mirror / "wp-config.php")
    [warning] = outside_content_warnings(mirror, 0)
    assert "wp-config.php is a symlink to /etc/wordpress/config-example.net.php, outside source" in warning
    (mirror / "wp-config.php").unlink()
    os.symlink("wp-config-real.php", mirror / "wp-config.php")
    assert outside_content_warnings(mirror, 0) == []
