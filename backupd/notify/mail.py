"""Email channel: stdlib smtplib, STARTTLS (or implicit TLS on port 465) with the certificate verified.

The default SSL context checks the server's certificate and name against the system's CAs; `ca_file`
trusts a private CA (or a self-signed server certificate) instead. The password comes from
`password_file`, read when sending, never from the config text or argv.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from backupd.notify.message import ChannelError, Message
from backupd.settings import EmailCfg, read_secret

if TYPE_CHECKING:
    from email.message import EmailMessage

IMPLICIT_TLS_PORT = 465


def tls_context(cfg: EmailCfg) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)


def build(cfg: EmailCfg, msg: Message) -> EmailMessage:
    from email.message import EmailMessage  # the email package: loaded when a mail is sent, not at config load
    from email.utils import formatdate, make_msgid

    mail = EmailMessage()
    mail["Subject"] = msg.title()
    mail["From"] = cfg.from_
    mail["To"] = ", ".join(cfg.to)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=cfg.from_.rpartition("@")[2] or None)
    mail["X-Backupd-Event"] = msg.event
    mail.set_content(msg.text())
    return mail


def send(cfg: EmailCfg, msg: Message, timeout: float) -> None:
    import smtplib

    try:
        context = tls_context(cfg)
        password = read_secret(cfg.password_file)
        smtp: smtplib.SMTP
        if cfg.smtp_port == IMPLICIT_TLS_PORT:
            smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if cfg.starttls and cfg.smtp_port != IMPLICIT_TLS_PORT:
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.user:
                smtp.login(cfg.user, password or "")
            smtp.send_message(build(cfg, msg))
    except smtplib.SMTPAuthenticationError as exc:
        raise ChannelError(f"login as {cfg.user} rejected: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise ChannelError(f"server said {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPException as exc:
        raise ChannelError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except ssl.SSLError as exc:
        raise ChannelError(f"TLS: {exc.reason or exc}") from None
    except TimeoutError:
        raise ChannelError(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise ChannelError(exc.strerror or str(exc) or type(exc).__name__) from None


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split())[:200]
