"""The status page at `/` of a running daemon, loaded in a real browser (headless Chromium): rows, states and
ids as rendered, everything escaped, no script; a screenshot is kept in the test's tmp dir."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupd.lab.content import write_config
from tests.conftest import run_cli, wait_for
from tests.notify.conftest import Receiver

HOSTILE = "<script>alert(1)</script>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium (apt-get install chromium)")


def browser(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def _config(tmp_path: Path, page: str = "full", notify: dict[str, object] | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    missing = tmp_path / HOSTILE.replace("/", "_")
    jobs = {
        "alpha": {"type": "files", "source": f"{src}/", "schedule": "@daily"},
        "broken": {"type": "files", "source": f"{missing}/", "schedule": "@daily"},
        "idle": {"type": "files", "source": f"{src}/", "schedule": "@daily"},
    }
    return write_config(tmp_path / "etc", jobs, settings={
        "http": {"listen": "127.0.0.1:0", "status_page": page},
        "scheduler": {"catchup": "none"},
        "notify": notify or {"on": []},
    })


def _daemon(cfg: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = cfg.parent / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(cfg), "daemon"], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ})

    def port() -> int | None:
        for line in log.read_text().splitlines():
            if line.startswith("{") and (e := json.loads(line))["event"] == "http_listening":
                return int(e["address"].rsplit(":", 1)[1])
        assert proc.poll() is None, log.read_text()
        return None

    return proc, wait_for(port, 20, "http_listening")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(40)


def test_status_page_in_a_browser(tmp_path: Path, capsys: pytest.CaptureFixture[str], receiver: Receiver) -> None:
    cfg = _config(tmp_path, notify={"on": ["overdue"], "webhook_urls": [receiver.url()]})
    for _ in range(3):  # a few backups for the size trend
        assert run_cli(capsys, "--config", str(cfg), "run", "alpha")[0] == 0
        (tmp_path / "src" / f"more-{_}.txt").write_text("x" * 5000 * (_ + 1))
    assert run_cli(capsys, "--config", str(cfg), "run", "broken")[0] == 1
    proc, port = _daemon(cfg)
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=10) as resp:
            raw = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "<script" not in raw and 'http-equiv="refresh"' in raw and 'name="viewport"' in raw
        assert "src=" not in raw and "href=" not in raw, "self-contained: no external assets"

        res = browser("--dump-dom", url)
        dom = res.stdout
        assert 'id="jobs"' in dom, res.stderr[-2000:]
        assert 'id="job-alpha" data-state="ok"' in dom
        assert 'id="job-broken" data-state="failing"' in dom
        assert 'id="job-idle" data-state="overdue"' in dom, "never ran and a fire time passed"
        assert 'id="error-broken"' in dom and html.escape(HOSTILE.replace("/", "_")) in dom
        assert "<script>" not in dom, "an error line is text, never markup"
        assert "<svg" in dom and "polyline" in dom, "alpha's size trend"

        shot = tmp_path / "status-page.png"
        browser("--screenshot=" + str(shot), "--window-size=1280,720", url)
        assert shot.is_file() and shot.stat().st_size > 5000
        phone = tmp_path / "status-page-phone.png"
        browser("--screenshot=" + str(phone), "--window-size=390,844", url)
        assert phone.is_file()
        # the daemon's own checks: the jobs that never succeeded are overdue, reported once each
        wait_for(lambda: len(receiver.requests) >= 2, 20, "overdue notifications from the daemon")
        assert sorted(r.json()["job"] for r in receiver.requests) == ["broken", "idle"]
        assert set(receiver.events()) == {"overdue"}
        keep = os.environ.get("BACKUPD_TEST_ARTIFACTS")
        if keep:
            for p in (shot, phone):
                shutil.copy(p, Path(keep) / p.name)
    finally:
        _stop(proc)


def test_public_and_off_modes_and_html_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backupd.daemon.page import render_page
    from backupd.daemon.status import JobStatus

    st = JobStatus(job="db<1>", type="files", enabled=True, schedule="@daily", timezone="UTC",
                   last_run_outcome="failed", last_run_error="job db, host secret-host, step dump: boom",
                   last_backup_id="20261201T000000Z", recent_sizes=[1, 2, 3], last_backup_bytes=3,
                   next_run=datetime.now(UTC))
    public = render_page([st], "public", "backup1")
    assert "db&lt;1&gt;" in public and 'data-state="failing"' in public
    assert "secret-host" not in public and "20261201T000000Z" not in public and "<svg" not in public
    full = render_page([st], "full", "backup1")
    assert "secret-host" in full and "<svg" in full

    cfg = _config(tmp_path, page="off")
    out_file = tmp_path / "status.html"
    run_cli(capsys, "--config", str(cfg), "status", "--html", str(out_file))  # exit 1: a job is overdue
    text = out_file.read_text()
    assert 'id="job-alpha"' in text and text.startswith("<!DOCTYPE html>")
    proc, port = _daemon(cfg)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert info.value.code == 404
    finally:
        _stop(proc)

