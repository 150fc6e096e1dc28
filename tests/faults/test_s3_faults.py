"""S3 faults through a real HTTP proxy in front of moto's server: 500s part-way through a copy, the
endpoint gone (connection refused), and an endpoint that stores altered or truncated bytes.

A failed copy never fails the run (the backup is committed), is marked failed/pending, is retried by the
next run, and nothing that is not yet in S3 is pruned locally.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backupd.lab.content import write_config
from backupd.lab.s3 import MotoS3
from backupd.store.s3 import Bucket
from tests.conftest import run_cli
from tests.faults.invariants import Cli, Target, check_invariants, counted, snapshot

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class S3Proxy:
    """Forwards every request to moto, except: `fail` requests after the next `fail_after` get a 500, and
    with `tamper` ("flip" or "truncate") the body of each artifact PUT is altered on the way (with a
    Content-Length and SHA256 checksum header that match the altered bytes, so moto stores them)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.fail_after = 0
        self.fail = 0
        self.tamper: str | None = None
        self.served_500 = self.tampered = self.forwarded = 0
        self.stop_after: int | None = None  # stop listening (connection refused) after this many requests
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while (n := int(self.rfile.readline().split(b";")[0], 16)) != 0:
                        out += self.rfile.read(n)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                if proxy._server is None:  # stopped: kept-alive connections are dropped, new ones refused
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                with proxy._lock:
                    if proxy.fail_after > 0:
                        proxy.fail_after -= 1
                        fail = False
                    else:
                        fail = proxy.fail > 0
                        proxy.fail -= fail
                    proxy.served_500 += fail
                    stop = proxy.stop_after is not None and proxy.forwarded + 1 >= proxy.stop_after
                if fail:
                    err = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                if self.command == "PUT" and proxy.tamper and name not in ("manifest.json", "verification.json") \
                        and "x-amz-copy-source" not in {k.lower() for k in headers} and body:
                    body, headers = _tampered(body, headers, proxy.tamper)
                    proxy.tampered += 1
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():  # a HEAD answer's Content-Length is the object's size
                    if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                with proxy._lock:
                    proxy.forwarded += 1
                if stop:
                    proxy.stop_after = None
                    threading.Thread(target=proxy.stop, daemon=True).start()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _aws_chunked_payload(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        line, rest = rest.split(b"\r\n", 1)
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return out
        out, rest = out + rest[:n], rest[n + 2 :]


def _tampered(body: bytes, headers: dict[str, str], how: str) -> tuple[bytes, dict[str, str]]:
    low = {k.lower(): k for k in headers}
    if "aws-chunked" in headers.get(low.get("content-encoding", ""), ""):
        body = _aws_chunked_payload(body)
    data = bytearray(body)
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2 :]
    drop = {"content-encoding", "x-amz-decoded-content-length", "x-amz-trailer", "content-md5"}
    out = {k: v for k, v in headers.items() if k.lower() not in drop and not k.lower().startswith("x-amz-checksum")}
    out["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    out["x-amz-checksum-sha256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
    out["x-amz-sdk-checksum-algorithm"] = "SHA256"
    return bytes(data), out


@pytest.fixture
def proxy(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Proxy]:
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    p = S3Proxy(moto_s3.port).start()
    try:
        yield p
    finally:
        p.stop()


def s3_target(base: Path, moto: MotoS3, endpoint: str, retention: dict[str, Any] | None = None) -> Target:
    bucket = f"flt-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    src = base / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    s3 = {"enabled": True, "bucket": bucket, "prefix": "f/", "endpoint_url": endpoint, "region": "us-east-1",
          "max_attempts": 2, "connect_timeout": 1, "read_timeout": 10}
    cfg = write_config(base / "etc", {"site": {"type": "files", "source": f"{src}/", "schedule": "@daily"}},
                       settings={"s3": s3}, retention=retention)
    return Target.at(cfg, "site")


def s3_states(cli: Cli, t: Target) -> dict[str, str]:
    rc, out, err = cli("--config", str(t.config), "list", "--json")
    assert rc == 0, err
    return {r["backup_id"]: r["s3"] for r in json.loads(out)}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return lambda *argv: run_cli(capsys, *argv)


def run(cli: Cli, t: Target) -> tuple[int, str, str]:
    return cli("--config", str(t.config), "run", t.job)


def test_s3_500s_then_unreachable(tmp_path: Path, moto_s3: MotoS3, proxy: S3Proxy, cli: Cli) -> None:
    t = s3_target(tmp_path, moto_s3, proxy.endpoint, retention={"default": {"keep_last": 1}})
    rc, out, err = run(cli, t)
    assert rc == 0, err
    assert "s3_failed" not in out, out
    assert set(s3_states(cli, t).values()) == {"copied"}

    # 500s beyond the retries, starting part-way through the copy (after its first two requests)
    with counted("S3 answering 500 mid-copy"):
        before = snapshot(t)
        proxy.fail_after, proxy.fail = 2, 8
        rc, out, _ = run(cli, t)
        assert rc == 0, "a failed copy never fails the committed backup"
        assert proxy.served_500 > 0
        new = t.committed()[-1]
        assert s3_states(cli, t)[new] in ("failed", "pending") and new not in before
        assert new in t.committed(), "the backup not in S3 is kept"
        proxy.fail_after = proxy.fail = 0
        check_invariants(cli, t, before, pruned_ok=True)
        assert set(s3_states(cli, t).values()) == {"copied"}, "the next run retried the failed copy"
        assert len(t.committed()) == 1, "once copied, the policy applies"

    # the endpoint gone: refused before the run, then stopping part-way through a copy
    with counted("S3 unreachable (connection refused)"):
        before = snapshot(t)
        port = proxy.port
        proxy.stop()
        made = []
        for _ in range(3):
            rc, out, err = run(cli, t)
            assert rc == 0, err
            assert "s3_failed" in out
            made.append(t.committed()[-1])
            assert set(made) <= set(t.committed()), "keep_last 1 pruned a backup that is not in S3"
        proxy.start()
        assert proxy.port == port
        proxy.stop_after = proxy.forwarded + 2  # a copy that loses its endpoint half-way
        rc, out, err = run(cli, t)
        assert rc == 0, err
        assert proxy._server is None and "s3_failed" in out, "the endpoint went away mid-copy"
        made.append(t.committed()[-1])
        states = s3_states(cli, t)
        assert set(made) <= set(t.committed()), ("a backup not yet in S3 was pruned", states)
        assert all(states[b] in ("failed", "pending") for b in made), states
        assert proxy.port == port
        proxy.start()
        check_invariants(cli, t, before, pruned_ok=True)
        assert set(s3_states(cli, t).values()) == {"copied"} and len(t.committed()) == 1
        keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=_bucket(t))["Contents"]]
        assert len({k.split("/")[2] for k in keys if k.endswith("/manifest.json")}) >= 6, "every copy was retried"


def _bucket(t: Target) -> str:
    return next(line.split('"')[1] for line in t.config.read_text().splitlines() if line.startswith("bucket ="))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_s3_stores_altered_bytes(
    how: str, tmp_path: Path, moto_s3: MotoS3, proxy: S3Proxy, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check right after the upload catches bytes S3 stored altered; with that check switched off the
    same copy would be marked copied (so this test would notice the check going away)."""
    t = s3_target(tmp_path, moto_s3, proxy.endpoint)
    assert run(cli, t)[0] == 0
    with counted(f"S3 stores {'a flipped byte' if how == 'flip' else 'truncated bytes'}"):
        before = snapshot(t)
        proxy.tamper = how
        rc, out, err = run(cli, t)
        assert rc == 0, err
        assert proxy.tampered >= 1
        bid = t.committed()[-1]
        assert s3_states(cli, t)[bid] == "failed", "an altered copy must not be marked copied"
        events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        [failed] = [e for e in events if e["event"] == "s3_failed" and e["backup_id"] == bid]
        assert "failed its check" in failed["error"]
        assert ("checksum" if how == "flip" else "size") in failed["error"], failed["error"]

        # the second path: without the post-upload check the altered copy is marked copied
        with monkeypatch.context() as m:
            real = Bucket.check_object

            def no_check(self: Bucket, key: str, *args: Any, **kwargs: Any) -> tuple[list[str], str]:
                return [], real(self, key, *args, **kwargs)[1]

            m.setattr(Bucket, "check_object", no_check)
            rc, _, err = run(cli, t)
            assert rc == 0, err
            assert s3_states(cli, t)[bid] == "copied", "with the check off, it passes"
            assert proxy.tampered >= 2
        rc, _, err = cli("--config", str(t.config), "verify", "--s3")
        assert rc == 1 and bid in err, "verify --s3 still finds the altered object"
        proxy.tamper = None
        check_invariants(cli, t, before)
        assert set(s3_states(cli, t).values()) == {"copied"}, "the altered copies were shipped again"


def test_proxy_refuses_when_stopped(proxy: S3Proxy) -> None:
    """The 'unreachable' fault is a refused connection, not a hang."""
    port = proxy.port
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
