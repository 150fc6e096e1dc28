"""One HTTP request with a hard timeout, for the webhook and Healthchecks channels (stdlib urllib)."""

from __future__ import annotations

from backupd import __version__
from backupd.notify.message import ChannelError

USER_AGENT = f"backupd/{__version__}"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST `body`; returns the status for a 2xx answer, raises ChannelError (no URL in it) otherwise."""
    import urllib.error  # urllib.request and http.client: loaded when a notification is sent, not at config load
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"User-Agent": USER_AGENT, **headers})  # noqa: S310 -- http(s) only, checked at config load
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            resp.read(65536)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise ChannelError(text or "connection failed") from None
    except TimeoutError:
        raise ChannelError(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise ChannelError(exc.strerror or type(exc).__name__) from None
