"""What the daemon shows: `/health`, `/health/jobs`, `/metrics` and the status page, served from a thread that
reads only the loop's last `Snapshot`, and the status line for systemd."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from backupd.daemon.metrics import make_registry, render
from backupd.daemon.page import render_page
from backupd.daemon.plan import Entry
from backupd.daemon.runs import Kind, Task
from backupd.daemon.sdnotify import Notifier
from backupd.daemon.status import all_status, notify_status
from backupd.logs import EventLog
from backupd.settings import Config

HEARTBEAT = 30.0  # longest sleep: /health staleness, clock-jump detection
HEALTH_STALE = 3 * HEARTBEAT


@dataclass
class Snapshot:
    """What the HTTP thread reads; replaced as a whole by the loop, never mutated."""

    heartbeat: float = 0.0
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    queued: list[dict[str, Any]] = field(default_factory=list)
    next_fire: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusServing:
    """The HTTP endpoints' side of `Daemon` (which sets these attributes)."""

    config: Config
    events: EventLog
    entries: dict[tuple[str, Kind], Entry]
    queue: list[Task]
    running: dict[int, Task]
    stopping: bool
    notifier: Notifier
    snapshot: Snapshot
    http: ThreadingHTTPServer | None
    _status_text: str

    def _status_line(self) -> str:
        nxt = min(self.entries.values(), key=lambda e: e.next_fire, default=None)
        text = f"{len(self.entries)} schedule(s), {len(self.running)} running, {len(self.queue)} queued"
        if nxt is not None:
            text += f"; next {nxt.job} {nxt.kind} at {nxt.next_fire:%Y-%m-%d %H:%M} UTC"
        return text

    def _publish(self) -> None:
        self.snapshot = Snapshot(
            heartbeat=time.monotonic(),
            running={
                t.job: {
                    "kind": t.kind,
                    "pid": t.proc.pid if t.proc else None,
                    "trigger": t.trigger,
                    "started_at": _utc(t.started_wall),
                }
                for t in self.running.values()
            },
            queued=[{"job": t.job, "kind": t.kind, "trigger": t.trigger} for t in self.queue],
            next_fire={f"{e.job}:{e.kind}": e.next_fire.strftime("%Y-%m-%dT%H:%M:%SZ") for e in self.entries.values()},
            started=self.snapshot.started,
        )
        text = self._status_line()
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    # ------------------------------------------------------------ HTTP

    def _start_http(self) -> None:
        host, _, port = self.config.settings.http.listen.rpartition(":")
        host = host.strip("[]")
        server = _Server((host, int(port)), _Handler)
        server.daemon_ref = self
        self.http = server
        self.events.event("http_listening", address=f"{host}:{server.server_address[1]}")
        threading.Thread(target=_serve, args=(server,), name="backupd-http", daemon=True).start()

    def healthy(self) -> bool:
        return time.monotonic() - self.snapshot.heartbeat < HEALTH_STALE

    def jobs_json(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        queued = {q["job"] for q in snap.queued}
        out = []
        for st in all_status(self.config):
            d = st.to_json()
            d["running"] = st.job in snap.running or d["running"]
            d["run"] = snap.running.get(st.job)
            d["queued"] = st.job in queued
            out.append(d)
        return out

    def page(self) -> str | None:
        mode = self.config.settings.http.status_page
        if mode == "off":
            return None
        snap = self.snapshot
        jobs = all_status(self.config)
        for st in jobs:
            st.running = st.running or st.job in snap.running
        notify = notify_status(self.config) if mode == "full" else None
        return render_page(jobs, mode, socket.gethostname(), notify)

    def metric_extras(self) -> dict[str, float]:
        snap = self.snapshot
        return {
            "backupd_daemon_running_children": float(len(snap.running)),
            "backupd_daemon_queued_runs": float(len(snap.queued)),
            "backupd_daemon_start_time_seconds": snap.started,
            "backupd_daemon_heartbeat_age_seconds": max(0.0, time.monotonic() - snap.heartbeat),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    daemon_ref: StatusServing


def _serve(server: _Server) -> None:
    """Block in the selector until a request arrives: serve_forever would wake twice a second."""
    server.timeout = None
    while True:
        server.handle_request()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _registry: Any = None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every 15 s would drown the run events

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _page(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        for header, value in (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            # self-contained by design: nothing to load, nothing to run, no framing
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
                                        " frame-ancestors 'none'"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ):
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, value: object) -> None:
        self._send(code, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), "application/json")

    def do_GET(self) -> None:
        daemon = self.server.daemon_ref
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/":
                page = daemon.page()
                if page is None:
                    self._json(404, {"error": "the status page is off ([http] status_page)"})
                else:
                    self._page(page)
            elif path == "/health":
                ok = daemon.healthy()
                age = round(time.monotonic() - daemon.snapshot.heartbeat, 3)
                self._json(
                    200 if ok else 503,
                    {"status": "ok" if ok else "stale", "heartbeat_age_seconds": age, "stopping": daemon.stopping},
                )
            elif path == "/health/jobs":
                self._json(200, daemon.jobs_json())
            elif path == "/metrics":
                if _Handler._registry is None:
                    _Handler._registry = make_registry(lambda: daemon.config, daemon.metric_extras)
                body, ctype = render(_Handler._registry)
                self._send(200, body, ctype)
            else:
                self._json(404, {"error": "not found", "paths": ["/", "/health", "/health/jobs", "/metrics"]})
        except Exception as exc:  # a broken scrape must not kill the thread
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
