"""Notifications from real backup runs (`files` jobs: no servers needed; a job fails when its source is a
missing path) to real receivers: an HTTP server on loopback for webhooks, Healthchecks pings and Apprise's
json://, and aiosmtpd with STARTTLS for email."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from tests.conftest import run_cli, wait_for
from tests.notify.conftest import Receiver, Smtp, free_port, start_receiver, stop_receiver

SECRET = "hmac-key-123"


def setup(tmp_path: Path, notify: dict[str, Any], jobs: dict[str, dict[str, Any]] | None = None,
          s3: dict[str, Any] | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "a.txt").write_text("hello\n")
    jobs = jobs if jobs is not None else {"alpha": {"type": "files", "source": f"{src}/", "schedule": "@daily"}}
    settings: dict[str, Any] = {"notify": {"timeout": 2, "attempts": 2, **notify}}
    if s3:
        settings["s3"] = s3
    return write_config(tmp_path / "etc", jobs, settings=settings)


def set_job(cfg: Path, name: str, **keys: Any) -> None:
    from backupd.lab.content import toml_text

    path = cfg.parent / "jobs" / f"{name}.toml"
    import tomllib

    raw = tomllib.loads(path.read_text())
    raw.update(keys)
    path.write_text(toml_text(raw))


def outbox(cfg: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(cfg.parent / "state" / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM outbox ORDER BY id"))
    finally:
        db.close()


def events_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_failure_once_then_recovered_with_signature_and_healthchecks(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "webhook.key"
    key.write_text(SECRET + "\n")
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "webhook_secret_file": str(key)})
    set_job(cfg, "alpha", source=str(tmp_path / "missing") + "/", healthchecks_url=receiver.url("/hc/abc-123"))

    rc, out, err = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 1
    [fail] = [r for r in receiver.requests if r.path == "/hook"]
    body = fail.json()
    assert body["event"] == "failure" and body["job"] == "alpha" and body["step"]
    assert "missing" in body["error"] and body["host"] and body["time"] and body["backupd_version"]
    assert set(body) >= {"event", "job", "backup_id", "host", "step", "error", "time", "backupd_version"}
    expected = "sha256=" + hmac.new(SECRET.encode(), fail.body, hashlib.sha256).hexdigest()
    assert fail.headers["X-Backupd-Signature"] == expected
    pings = [r.path for r in receiver.requests if r.path.startswith("/hc/")]
    assert pings == ["/hc/abc-123/start", "/hc/abc-123/fail"]
    fail_ping = next(r for r in receiver.requests if r.path == "/hc/abc-123/fail")
    assert b'"event": "failed"' in fail_ping.body and len(fail_ping.body) <= 10 * 1024
    assert "abc-123" not in out + err, "a Healthchecks URL is a secret: never logged whole"

    rc, _, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")  # still failing: said already
    assert rc == 1 and receiver.events() == ["failure"]

    set_job(cfg, "alpha", source=str(tmp_path / "src") + "/")
    rc, _, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 0 and receiver.events() == ["failure", "recovered"]
    pings = [r.path for r in receiver.requests if r.path.startswith("/hc/")]
    assert pings[-2:] == ["/hc/abc-123/start", "/hc/abc-123"]
    rc, _, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 0 and receiver.events() == ["failure", "recovered"], "success is not in `on`"


def test_job_notify_table_overrides_global(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    other = start_receiver()
    try:
        cfg = setup(tmp_path, {"webhook_urls": [other.url()]})
        set_job(cfg, "alpha", notify={"webhook_urls": [receiver.url()], "on": ["success"]})
        assert run_cli(capsys, "--config", str(cfg), "run", "alpha")[0] == 0
        assert receiver.events() == ["success"] and other.requests == []
        assert receiver.requests[0].json()["backup_id"]
    finally:
        stop_receiver(other)


def test_refused_connection_is_kept_and_delivered_when_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens: connection refused
    cfg = setup(tmp_path, {"webhook_urls": [f"http://127.0.0.1:{port}/hook?token=s3cr3t"], "retry_interval": 0,
                           "on": ["failure"]})
    set_job(cfg, "alpha", source=str(tmp_path / "missing") + "/")
    t0 = time.monotonic()
    rc, out, err = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 1 and time.monotonic() - t0 < 10
    failed = [e for e in events_of(out) if e["event"] == "notify_failed"]
    assert failed and "refused" in failed[0]["error"].lower()
    assert "s3cr3t" not in out + err and f"127.0.0.1:{port}/…" in failed[0]["channel"]
    [entry] = outbox(cfg)
    assert entry["state"] == "pending" and entry["event"] == "failure" and "s3cr3t" not in entry["channel"]

    rec = start_receiver(port)  # the channel is back
    try:
        rc, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--notify")
        assert rec.events() == ["failure"], "delivered on retry, not dropped"
        assert outbox(cfg) == []
    finally:
        stop_receiver(rec)


def test_undeliverable_is_reported_in_events_status_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    cfg = setup(tmp_path, {"webhook_urls": [f"http://127.0.0.1:{port}/hook"], "retry_interval": 0,
                           "outbox_attempts": 2, "on": ["failure"]})
    set_job(cfg, "alpha", source=str(tmp_path / "missing") + "/")
    assert run_cli(capsys, "--config", str(cfg), "run", "alpha")[0] == 1
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--notify")
    assert outbox(cfg)[0]["state"] == "pending"
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--notify")
    warnings = [e for e in events_of(out) if e["event"] == "warning" and e.get("step") == "notify"]
    assert warnings and "undeliverable" in warnings[0]["error"]
    assert outbox(cfg)[0]["state"] == "undeliverable"
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status")
    assert "notify: 1 message(s) undeliverable via webhook" in out
    assert "undeliverable: failure of job alpha" in out

    from backupd.config import load_config
    from backupd.daemon.metrics import make_registry, render

    config = load_config(cfg)
    text = render(make_registry(lambda: config))[0].decode()
    assert 'backupd_notify_failures_total{channel="webhook"} 1.0' in text


def test_hanging_webhook_cannot_hold_up_a_run(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.mode = "hang"
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "on": ["success"], "timeout": 1, "attempts": 2})
    t0 = time.monotonic()
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    took = time.monotonic() - t0
    assert rc == 0, "the run's exit code is its backup's outcome"
    assert took < 10, f"a hanging channel held the run for {took:.1f}s"
    assert any(e["event"] == "notify_failed" for e in events_of(out))
    assert outbox(cfg)[0]["event"] == "success"


def test_already_running_sends_nothing(tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    from backupd.store.locks import job_lock

    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "on": ["failure", "success"]})
    set_job(cfg, "alpha", healthchecks_url=receiver.url("/hc/x"))
    state = cfg.parent / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    with job_lock(state, "alpha"):
        rc, _, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 75 and receiver.requests == []


def test_s3_copy_failure_exits_0_and_sends_s3_failure(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = {"enabled": True, "bucket": "b", "endpoint_url": f"http://127.0.0.1:{free_port()}", "region": "us-east-1",
          "max_attempts": 1, "connect_timeout": 1, "read_timeout": 1}
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "s3_lag": 0}, s3=s3)
    rc, _, _ = run_cli(capsys, "--config", str(cfg), "run", "alpha")
    assert rc == 0
    assert "s3_failure" in receiver.events()
    s3_msg = next(r.json() for r in receiver.requests if r.json()["event"] == "s3_failure")
    assert s3_msg["backup_id"] and s3_msg["error"]
    assert "s3_lag" in receiver.events(), "s3_lag = 0: a backup not in S3 is lagging at once"
    _, out, _ = run_cli(capsys, "--config", str(cfg), "status", "--json")
    [st] = json.loads(out)
    assert st["s3_pending"] == 1 and st["s3_enabled"]

    from backupd.config import load_config
    from backupd.daemon.metrics import make_registry, render

    config = load_config(cfg)
    text = render(make_registry(lambda: config))[0].decode()
    assert 'backupd_s3_pending_backups{backup_job="alpha"} 1.0' in text


def test_low_space_and_overdue(tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    jobs = {"alpha": {"type": "files", "source": f"{src}/", "schedule": "@daily"},
            "never": {"type": "files", "source": f"{src}/", "schedule": "@hourly"}}
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "low_space_margin": 1e18}, jobs=jobs)
    assert run_cli(capsys, "--config", str(cfg), "run", "alpha")[0] == 0
    assert receiver.events() == ["low_space"]
    assert "free on the store's filesystem" in receiver.requests[0].json()["error"]
    run_cli(capsys, "--config", str(cfg), "status", "--notify")
    overdue = [r.json() for r in receiver.requests if r.json()["event"] == "overdue"]
    assert [o["job"] for o in overdue] == ["never"], "a job that never ran is overdue once a fire time passed"
    run_cli(capsys, "--config", str(cfg), "status", "--notify")
    assert receiver.events().count("overdue") == 1 and receiver.events().count("low_space") == 1, "one per state"


def test_drill_failure_is_sent(tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()]})
    rc, _, _ = run_cli(capsys, "--config", str(cfg), "drill", "alpha")  # no backup to drill
    assert rc == 1 and receiver.events() == ["drill_failure"]
    assert receiver.requests[0].json()["error"]


def test_notify_test_through_every_channel(
    tmp_path: Path, receiver: Receiver, smtp_server: Smtp, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "smtp.password"
    pw.write_text(smtp_server.password + "\n")
    urls = tmp_path / "apprise.urls"
    urls.write_text(f"# ntfy and friends\njson://127.0.0.1:{receiver.port}/apprise\n")
    email = {"to": ["ops@example.net"], "from": "backupd@backup1.example.net", "smtp_host": "localhost",
             "smtp_port": smtp_server.port, "starttls": True, "user": smtp_server.user, "password_file": str(pw),
             "ca_file": str(smtp_server.ca_file)}
    cfg = setup(tmp_path, {"webhook_urls": [receiver.url()], "apprise_urls_file": str(urls), "email": email})
    set_job(cfg, "alpha", healthchecks_url=receiver.url("/hc/t"))
    rc, out, err = run_cli(capsys, "--config", str(cfg), "notify", "test", "--job", "alpha")
    assert rc == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.endswith(": ok") for line in lines), out
    assert smtp_server.password not in out
    paths = sorted(r.path for r in receiver.requests)
    assert paths == ["/apprise", "/hc/t/log", "/hook"]
    apprise_body = next(r for r in receiver.requests if r.path == "/apprise").json()
    assert "test notification" in apprise_body["title"]
    [mail] = smtp_server.messages
    assert mail.rcpt_tos == ["ops@example.net"] and b"Subject: [backupd] test notification" in mail.content


def test_smtp_login_rejected(tmp_path: Path, smtp_server: Smtp, capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "smtp.password"
    pw.write_text("wrong\n")
    email = {"to": ["ops@example.net"], "from": "b@example.net", "smtp_host": "localhost",
             "smtp_port": smtp_server.port, "user": "backupd", "password_file": str(pw),
             "ca_file": str(smtp_server.ca_file)}
    cfg = setup(tmp_path, {"email": email, "timeout": 10})
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "notify", "test")
    assert rc == 1 and "login as backupd rejected: 535" in out and "wrong" not in out


def test_smtp_certificate_is_verified(tmp_path: Path, smtp_server: Smtp, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ca_file the self-signed certificate is not trusted: STARTTLS fails, nothing is sent."""
    email = {"to": ["ops@example.net"], "from": "b@example.net", "smtp_host": "localhost",
             "smtp_port": smtp_server.port}
    cfg = setup(tmp_path, {"email": email})
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "notify", "test")
    assert rc == 1 and "TLS" in out and "CERTIFICATE_VERIFY_FAILED" in out and smtp_server.messages == []


# ------------------------------------------------------------------ bad config


def _load_error(capsys: pytest.CaptureFixture[str], cfg: Path) -> str:
    rc, _, err = run_cli(capsys, "--config", str(cfg), "check-config")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_old_keys_get_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, {"webhook_url": "https://hooks.example.net/x"})
    assert "notify: webhook_url was replaced by webhook_urls: write webhook_urls = [" in _load_error(capsys, cfg)
    cfg = setup(tmp_path / "b", {"command": ["/usr/local/bin/page-me"]})
    assert "notify: command is no longer supported" in _load_error(capsys, cfg)


def test_malformed_and_unknown_urls_are_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path, {"webhook_urls": ["hooks.example.net/no-scheme"]})
    assert "notify.webhook_urls[0]: malformed URL" in _load_error(capsys, cfg)
    cfg = setup(tmp_path / "b", {"apprise_urls": ["nosuchscheme://token@host/x"]})
    msg = _load_error(capsys, cfg)
    assert "notify.apprise_urls[0]: unknown Apprise scheme" in msg and "token" not in msg
    cfg = setup(tmp_path / "c", {})
    set_job(cfg, "alpha", healthchecks_url="ftp://hc.example.net/uuid")
    assert "alpha.toml: healthchecks_url: malformed URL" in _load_error(capsys, cfg)


def test_apprise_not_installed_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_apprise(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "apprise":
            raise ImportError("No module named 'apprise'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_apprise)
    cfg = setup(tmp_path, {"apprise_urls": ["ntfy://ntfy.sh/topic"]})
    expected = "notify.apprise_urls[0]: apprise is not installed: pip install 'backupd[apprise]'"
    assert expected in _load_error(capsys, cfg)


def test_promtool_accepts_the_alert_rules() -> None:
    import shutil
    import subprocess

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = Path(__file__).resolve().parents[2] / "contrib" / "prometheus-alerts.yml"
    res = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BackupdS3CopiesLagging" in rules.read_text() and "BackupdNotificationsUndeliverable" in rules.read_text()



def test_a_drill_the_daemon_times_out_is_sent(tmp_path: Path, receiver: Receiver) -> None:
    """A drill stopped by the daemon cannot report itself: the daemon sends its drill_failure."""
    import os

    from tests.integration.test_daemon import DaemonProc

    src = tmp_path / "src"
    src.mkdir()
    with (src / "big.bin").open("wb") as fh:  # the drill takes longer than the 1 s timeout
        for _ in range(6):
            fh.write(os.urandom(64 << 20))
    job = {"type": "files", "source": f"{src}/", "schedule": "@yearly", "timeout": 1, "drill_schedule": "@yearly"}
    cfg = write_config(tmp_path / "etc", {"alpha": job},
                       settings={"notify": {"timeout": 2, "attempts": 2, "webhook_urls": [receiver.url()]},
                                 "http": {"listen": "127.0.0.1:0"}})
    set_job(cfg, "alpha", timeout="10m")
    rc, _, err = run_cli_sub(cfg, "run", "alpha")
    assert rc == 0, err
    set_job(cfg, "alpha", timeout=1)
    d = DaemonProc(cfg)
    try:
        d.wait_event("exited", timeout=60, job="alpha", kind="drill", reason="timeout")
        wait_for(lambda: "drill_failure" in receiver.events(), 30, "drill_failure sent")
    finally:
        d.stop()
    sent = next(r.json() for r in receiver.requests if r.path == "/hook" and r.json()["event"] == "drill_failure")
    assert "timed out" in sent["error"] and sent["job"] == "alpha"


def run_cli_sub(cfg: Path, *args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "backupd", "--config", str(cfg), *args], capture_output=True,
                         text=True, timeout=120, check=False)
    return out.returncode, out.stdout, out.stderr
