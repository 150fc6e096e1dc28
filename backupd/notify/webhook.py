"""Webhook channel: the event as JSON, POSTed; with a secret, an HMAC-SHA256 of the body in a header.

The receiver checks `X-Backupd-Signature: sha256=<hex of HMAC-SHA256(secret, body)>` against the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from backupd.notify.message import Message
from backupd.notify.web import post

SIGNATURE_HEADER = "X-Backupd-Signature"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def send(url: str, msg: Message, secret: bytes | None, timeout: float) -> None:
    body = json.dumps(msg.payload(), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Backupd-Event": msg.event}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    post(url, body, headers, timeout)
