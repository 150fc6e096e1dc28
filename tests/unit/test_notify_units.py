"""The pure parts of notifications: redaction, signatures, ping URLs, bodies, per-job overrides, the page."""

from __future__ import annotations

import hashlib
import hmac
import json

from backupd.daemon.page import render_page, sparkline
from backupd.daemon.status import JobStatus
from backupd.notify.channels import http_url_problem
from backupd.notify.healthchecks import ping_url
from backupd.notify.message import BODY_LIMIT, Message, redact
from backupd.notify.webhook import sign
from backupd.settings import JobNotifyCfg, NotifyCfg


def test_redact_keeps_scheme_and_host_only() -> None:
    assert redact("https://hc-ping.com/0b1c-uuid?x=1") == "https://hc-ping.com/…"
    assert redact("ntfy://user:pass@ntfy.example.net:8443/topic") == "ntfy://ntfy.example.net:8443/…"
    assert "pass" not in redact("http://u:pass@[::1]:80/x")


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"event": "failure"}'
    assert sign(b"k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_healthchecks_ping_urls() -> None:
    assert ping_url("https://hc.example.net/ping/abc/", "start") == "https://hc.example.net/ping/abc/start"
    assert ping_url("https://hc.example.net/ping/abc?rid=1", "fail") == "https://hc.example.net/ping/abc/fail?rid=1"
    assert ping_url("https://hc.example.net/ping/abc", "success") == "https://hc.example.net/ping/abc"


def test_ping_body_is_the_log_tail_cut_to_10k() -> None:
    msg = Message("failure", job="j", stage="fail", log_tail="x" * 50_000 + "END")
    body = msg.ping_body()
    assert len(body) == BODY_LIMIT and body.endswith(b"END")


def test_payload_has_the_contract_fields_and_round_trips() -> None:
    msg = Message("failure", job="j", step="dump", error="boom")
    assert {"event", "job", "backup_id", "host", "step", "error", "time", "backupd_version"} <= set(msg.payload())
    assert Message.from_json(msg.to_json()) == msg
    json.dumps(msg.payload())


def test_url_checks() -> None:
    assert http_url_problem("https://hooks.example.net/x") is None
    assert http_url_problem("hooks.example.net") is not None
    assert http_url_problem("http://") is not None
    assert http_url_problem("https://a b") is not None


def test_job_notify_overrides_only_what_it_sets() -> None:
    base = NotifyCfg(webhook_urls=["https://a.example.net/"], repeat=100)
    merged = JobNotifyCfg(repeat=5).over(base)
    assert merged.repeat == 5 and merged.webhook_urls == ["https://a.example.net/"]


def test_page_escapes_and_sparkline() -> None:
    st = JobStatus(job="<j>", type="t", enabled=True, schedule="@daily", timezone="UTC",
                   last_run_outcome="failed", last_run_error='"><img src=x onerror=alert(1)>')
    page = render_page([st], "full", "<host>")
    assert "<img" not in page and "&lt;j&gt;" in page and "&lt;host&gt;" in page
    assert sparkline([1]).count("<svg") == 0 and sparkline([1, 5, 3]).startswith("<svg")
