"""Sending: every channel in its own thread with a short timeout and a few tries with backoff, all under
one deadline, so nothing here can hang or fail a run, a drill or the daemon. What a channel did not take
goes to the catalog's outbox; `retry_outbox` (the daemon, or `backupd status --notify` in timer mode)
tries again with a growing interval and, after `outbox_attempts`, reports it undeliverable: a `warning`
event, `backupd_notify_failures_total{channel}` and a line in `backupd status`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backupd.logs import EventLog
from backupd.notify import channels as chans
from backupd.notify.channels import Channel
from backupd.notify.message import ChannelError, Message
from backupd.settings import Config
from backupd.store.catalog import Catalog, now_iso

BACKOFF = 0.5  # seconds before the 2nd try, doubled for each further one
MAX_INTERVAL = 3600.0  # the outbox's longest wait between retries
DOWN_FOR = 60.0  # a channel that just failed is not tried again by this process for this long
# channel key -> (monotonic time it failed, error): the next messages of a run go straight to the outbox, so a
# channel that hangs costs a run one deadline, not one per message
_down: dict[str, tuple[float, str]] = {}


@dataclass
class Result:
    channel: Channel
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _backoffs(attempts: int) -> list[float]:
    return [BACKOFF * 2**i for i in range(attempts - 1)]


def _try(ch: Channel, msg: Message, timeout: float, attempts: int) -> str | None:
    error: str | None = None
    waits = _backoffs(attempts)
    for i in range(attempts):
        try:
            ch.send(msg, timeout)
            return None
        except ChannelError as exc:
            error = str(exc)
        except Exception as exc:  # a channel bug is a failed send, never a failed run
            error = f"{type(exc).__name__} in the {ch.kind} channel"
        if i < len(waits):
            time.sleep(waits[i])
    return error


def send_now(targets: list[Channel], msg: Message, timeout: float, attempts: int) -> list[Result]:
    """Send to every channel at once; each result comes back by the shared deadline, or is a timeout."""
    deadline_s = attempts * timeout + sum(_backoffs(attempts)) + 1.0
    boxes: list[tuple[Channel, threading.Thread, dict[str, str | None]]] = []
    for ch in targets:
        box: dict[str, str | None] = {}

        def work(ch: Channel = ch, box: dict[str, str | None] = box) -> None:
            box["error"] = _try(ch, msg, timeout, attempts)

        t = threading.Thread(target=work, name=f"notify-{ch.kind}", daemon=True)
        t.start()
        boxes.append((ch, t, box))
    end = time.monotonic() + deadline_s
    out = []
    for ch, t, box in boxes:
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive() or "error" not in box:
            out.append(Result(ch, f"no answer within {deadline_s:.0f}s"))
        else:
            out.append(Result(ch, box["error"]))
    return out


def notify(
    config: Config,
    catalog: Catalog | None,
    events: EventLog,
    msg: Message,
    exclude: set[str] | None = None,
) -> list[Result]:
    """Send `msg` to the channels that want it; a failure is logged and kept in the outbox. Never raises."""
    try:
        cfg = config.notify_for(msg.job)
        targets = [c for c in chans.build(config, msg.job) if c.wants(msg) and c.key not in (exclude or set())]
        if not targets:
            return []
        now = time.monotonic()
        down = {c.key: _down[c.key][1] for c in targets if c.key in _down and now - _down[c.key][0] < DOWN_FOR}
        results = send_now([c for c in targets if c.key not in down], msg, float(cfg.timeout), cfg.attempts)
        results += [Result(c, f"{down[c.key]} (failed moments ago, not tried again)") for c in targets
                    if c.key in down]
        for r in results:
            if not r.ok and r.channel.key not in down:
                _down[r.channel.key] = (time.monotonic(), r.error or "failed")
            elif r.ok:
                _down.pop(r.channel.key, None)
            if r.ok:
                events.event("notified", channel=r.channel.label, notify_event=msg.event, stage=msg.stage)
                continue
            events.event("notify_failed", channel=r.channel.label, notify_event=msg.event, error=r.error)
            if catalog is not None and msg.stage != "start" and msg.event != "test":
                _queue(config, catalog, events, r.channel, msg, r.error or "failed")
        return results
    except Exception as exc:  # reading a secret file, the catalog: reported, never raised into a run
        events.event("warning", step="notify", error=f"notification {msg.event} not sent: {type(exc).__name__}: {exc}")
        return []


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _queue(config: Config, catalog: Catalog, events: EventLog, ch: Channel, msg: Message, error: str) -> None:
    cfg = config.notify_for(msg.job)
    entry = catalog.outbox_add(ch.key, msg.job, msg.event, msg.to_json(), 0, _later(cfg.retry_interval), error)
    if cfg.outbox_attempts == 0:
        _give_up(config, catalog, events, entry, ch, msg, error, 0)


def _give_up(
    config: Config, catalog: Catalog, events: EventLog, entry: int, ch: Channel | None, msg: Message, error: str,
    attempts: int,
) -> None:
    label = ch.label if ch is not None else "a removed channel"
    catalog.outbox_update(entry, "undeliverable", attempts, error=error)
    events.event(
        "warning", step="notify", job=msg.job, channel=label, notify_event=msg.event,
        error=f"notification undeliverable after {attempts + 1} tries: {error}",
    )
    if msg.event != "notify_failure" and ch is not None:
        notice = Message("notify_failure", job=msg.job, error=f"{label}: {error}",
                         details={"channel": label, "undelivered_event": msg.event})
        notify(config, catalog, events, notice, exclude={ch.key})


def retry_outbox(config: Config, catalog: Catalog, events: EventLog) -> tuple[int, int]:
    """Retry every due outbox message once; returns (delivered, still failing or given up)."""
    sent = failed = 0
    for row in catalog.outbox_due(now_iso()):
        msg = Message.from_json(row["payload"])
        cfg = config.notify_for(msg.job if msg.job in config.jobs else None)
        try:
            known = {c.key: c for c in chans.build(config, msg.job if msg.job in config.jobs else None)}
        except Exception as exc:
            events.event("warning", step="notify", error=f"outbox: {type(exc).__name__}: {exc}")
            return sent, failed
        ch = known.get(row["channel"])
        attempts = int(row["attempts"]) + 1
        if ch is None:
            _give_up(config, catalog, events, row["id"], None, msg, "channel no longer configured", attempts)
            failed += 1
            continue
        [result] = send_now([ch], msg, float(cfg.timeout), 1)
        if result.ok:
            catalog.outbox_delete(row["id"])
            events.event("notified", channel=ch.label, notify_event=msg.event, retried=attempts)
            sent += 1
            continue
        failed += 1
        error = result.error or "failed"
        if attempts >= cfg.outbox_attempts:
            _give_up(config, catalog, events, row["id"], ch, msg, error, attempts)
        else:
            wait = min(cfg.retry_interval * 2.0**attempts, MAX_INTERVAL)
            catalog.outbox_update(row["id"], "pending", attempts, next_at=_later(wait), error=error)
            events.event("notify_failed", channel=ch.label, notify_event=msg.event, error=error, retry_in=round(wait))
    return sent, failed
