"""The channels configured for a job (its [notify] over the global one, and its Healthchecks check), and the
checks config loading runs on their URLs.

A channel is known by `kind:fingerprint` (a hash of its URL or server), which is what the outbox stores:
never the URL itself, which often carries a token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backupd.notify import apprise_urls, healthchecks, mail, webhook
from backupd.notify.message import Message, redact
from backupd.settings import Config, EmailCfg, JobNotifyCfg, NotifyCfg, read_secret

Sender = Callable[[Message, float], None]


@dataclass(frozen=True)
class Channel:
    kind: str  # webhook | apprise | email | healthchecks
    key: str  # kind:fingerprint
    label: str  # safe to log
    send: Sender
    on: frozenset[str]  # events it takes (Healthchecks: run stages instead)

    def wants(self, msg: Message) -> bool:
        if self.kind == "healthchecks":
            return msg.stage is not None
        return msg.stage is None and (msg.event == "test" or msg.event in self.on)


def fingerprint(kind: str, ident: str) -> str:
    return f"{kind}:{hashlib.sha256(f'{kind}|{ident}'.encode()).hexdigest()[:12]}"


def url_lines(path: Path | None) -> list[str]:
    """A `*_urls_file`: one URL a line; blank lines and # comments are skipped."""
    if path is None:
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def webhook_urls(cfg: NotifyCfg | JobNotifyCfg) -> list[str]:
    return list(cfg.webhook_urls or []) + url_lines(cfg.webhook_urls_file)


def apprise_list(cfg: NotifyCfg | JobNotifyCfg) -> list[str]:
    return list(cfg.apprise_urls or []) + url_lines(cfg.apprise_urls_file)


def healthchecks_url(config: Config, job: str | None) -> str | None:
    j = config.jobs.get(job) if job else None
    if j is None:
        return None
    return j.healthchecks_url or read_secret(j.healthchecks_url_file)


def build(config: Config, job: str | None) -> list[Channel]:
    """Every channel a message about `job` (None: about no one job) goes to."""
    cfg = config.notify_for(job)
    on = frozenset(cfg.on)
    out: list[Channel] = []
    secret_text = read_secret(cfg.webhook_secret_file)
    secret = secret_text.encode() if secret_text else None
    for url in webhook_urls(cfg):
        out.append(Channel("webhook", fingerprint("webhook", url), f"webhook {redact(url)}",
                           _webhook(url, secret), on))
    for url in apprise_list(cfg):
        out.append(Channel("apprise", fingerprint("apprise", url), f"apprise {redact(url)}", _apprise(url), on))
    if cfg.email is not None:
        em = cfg.email
        ident = f"{em.smtp_host}:{em.smtp_port}:{','.join(em.to)}"
        out.append(Channel("email", fingerprint("email", ident), f"email {em.smtp_host}:{em.smtp_port}",
                           _mail(em), on))
    hc = healthchecks_url(config, job)
    if hc:
        out.append(Channel("healthchecks", fingerprint("healthchecks", hc), f"healthchecks {redact(hc)}",
                           _hc(hc), on))
    return out


def _webhook(url: str, secret: bytes | None) -> Sender:
    return lambda msg, timeout: webhook.send(url, msg, secret, timeout)


def _apprise(url: str) -> Sender:
    return lambda msg, timeout: apprise_urls.send(url, msg, timeout)


def _mail(cfg: EmailCfg) -> Sender:
    return lambda msg, timeout: mail.send(cfg, msg, timeout)


def _hc(url: str) -> Sender:
    return lambda msg, timeout: healthchecks.send(url, msg, timeout)


# ------------------------------------------------------------------ checks at config load


def http_url_problem(url: str) -> str | None:
    """None for a usable http(s) URL, else what is wrong (naming no more than scheme and host)."""
    if not url or any(c.isspace() for c in url):
        return "malformed URL (empty or has spaces)"
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return "malformed URL"
    if parts.scheme not in ("http", "https"):
        return f"malformed URL {redact(url)}: expected http:// or https://"
    if not parts.hostname or not port_ok:
        return f"malformed URL {redact(url)}: no host"
    return None


def problems(cfg: NotifyCfg | JobNotifyCfg) -> list[tuple[str, str]]:
    """(key, problem) for each bad URL of a [notify] table whose files are already resolved and readable."""
    out: list[tuple[str, str]] = []
    for i, url in enumerate(cfg.webhook_urls or []):
        if (p := http_url_problem(url)) is not None:
            out.append((f"webhook_urls[{i}]", p))
    for i, url in enumerate(url_lines(cfg.webhook_urls_file)):
        if (p := http_url_problem(url)) is not None:
            out.append(("webhook_urls_file", f"line {i + 1}: {p}"))
    named = [(f"apprise_urls[{i}]", u) for i, u in enumerate(cfg.apprise_urls or [])]
    named += [("apprise_urls_file", u) for u in url_lines(cfg.apprise_urls_file)]
    for key, url in named:
        try:
            p = apprise_urls.check(url)
        except apprise_urls.AppriseMissing as exc:
            out.append((key, str(exc)))
            break
        if p is not None:
            out.append((key, p))
    return out
