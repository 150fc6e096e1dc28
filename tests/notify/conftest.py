"""Real receivers for the notification tests: an HTTP server on a loopback port that records every request
(webhooks, Healthchecks pings, Apprise's json://), and an SMTP server (aiosmtpd) with STARTTLS and a
self-signed certificate made by `openssl req`."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records requests; `mode` is ok (200), fail (500) or hang (never answers until the test ends)."""

    server: ThreadingHTTPServer
    requests: list[Request] = field(default_factory=list)
    mode: str = "ok"
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self) -> list[str]:
        return [r.json()["event"] for r in self.requests if r.path.split("?")[0] == "/hook"]


def _handler(rec: Receiver) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if rec.mode == "hang":
                rec.release.wait(60)
                return
            rec.requests.append(Request("POST", self.path, dict(self.headers.items()), body))
            code = 500 if rec.mode == "fail" else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST

    return H


def start_receiver(port: int = 0) -> Receiver:
    rec = Receiver(server=None)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(rec))
    server.daemon_threads = True
    rec.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return rec


def stop_receiver(rec: Receiver) -> None:
    rec.release.set()
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    stop_receiver(rec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ SMTP


@dataclass
class Smtp:
    port: int
    ca_file: Path
    messages: list[Any]
    user: str = "backupd"
    password: str = "s3cret-pw"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[Smtp]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    messages: list[Any] = []
    smtp = Smtp(port=free_port(), ca_file=cert, messages=messages)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            messages.append(envelope)
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            smtp.user.encode(), smtp.password.encode())
        # an explicit 535: aiosmtpd 1.4 answers nothing to a failed AUTH PLAIN without a message
        rejected = "535 5.7.8 Authentication credentials invalid"
        return AuthResult(success=ok, handled=False, message=None if ok else rejected)

    controller = Controller(
        Handler(), hostname="127.0.0.1", port=smtp.port, tls_context=context, require_starttls=True,
        authenticator=auth, auth_require_tls=True,
    )
    controller.start()
    yield smtp
    controller.stop()
