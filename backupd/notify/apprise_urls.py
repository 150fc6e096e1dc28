"""Apprise channel (optional extra `backupd[apprise]`): everything else, ntfy, Slack, Matrix, Telegram, ...

One Apprise object per URL, so each URL is its own channel with its own result and deadline. Apprise's
own log lines can hold URLs, so its logger is kept quiet.
"""

from __future__ import annotations

import logging
from typing import Any

from backupd.notify.message import ChannelError, Message, redact

EXTRA = "pip install 'backupd[apprise]'"


class AppriseMissing(Exception):
    pass


def _apprise() -> Any:
    try:
        import apprise
    except ImportError:
        raise AppriseMissing(f"apprise is not installed: {EXTRA}") from None
    log = logging.getLogger("apprise")
    log.handlers = [logging.NullHandler()]
    log.propagate = False
    return apprise


def check(url: str) -> str | None:
    """None when Apprise knows the URL, else why not (naming the scheme only)."""
    apprise = _apprise()
    if "://" not in url:
        return "not a URL (expected scheme://...)"
    if apprise.Apprise.instantiate(url) is None:
        return f"unknown Apprise scheme or malformed URL {redact(url)}"
    return None


def send(url: str, msg: Message, timeout: float) -> None:
    apprise = _apprise()
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        raise ChannelError("Apprise does not take this URL")
    for attr in ("socket_connect_timeout", "socket_read_timeout"):
        if hasattr(plugin, attr):
            setattr(plugin, attr, timeout)
    obj = apprise.Apprise()
    obj.add(plugin)
    if not obj.notify(title=msg.title(), body=msg.text()):
        raise ChannelError("Apprise could not deliver the message")
