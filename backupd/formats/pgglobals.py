"""Streaming check of ``pg_dumpall --globals-only`` output: the cluster's roles, memberships and tablespaces.

The script is plain SQL between a ``-- PostgreSQL database cluster dump`` header comment and a
``-- PostgreSQL database cluster dump complete`` comment; 13.22+, 14.19+, 15.14+, 16.10+ and 17.6+ wrap it in
``\\restrict KEY`` ... ``\\unrestrict KEY``, with the ``\\unrestrict`` line before the completion comment
(pg_dump puts it after its own). Either order is accepted; the keys must match, and nothing but comments may
follow ``\\unrestrict``.

stats: {"roles": [names], "tablespaces": [names], "memberships": n, "role_settings": n, "statements": n}.
facts: {"role_passwords": bool (an ALTER ROLE carries a PASSWORD), "restrict": bool}.
Lines are read one at a time (each looked at only up to LINE_CAP), so memory is constant.
"""

from __future__ import annotations

import re
from typing import Any

from .base import CheckResult, FormatChecker

HEADER = (b"--", b"-- PostgreSQL database cluster dump", b"--")
_START = b"--\n-- PostgreSQL database cluster dump\n--\n"
_COMPLETE = b"-- PostgreSQL database cluster dump complete"
_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rb"CREATE ROLE (" + _IDENT + rb");")
_CREATE_TABLESPACE = re.compile(rb"CREATE TABLESPACE (" + _IDENT + rb") ")
_ROLE_SETTING = re.compile(rb"ALTER ROLE " + _IDENT + rb" (?:IN DATABASE " + _IDENT + rb" )?SET ")
_PASSWORD = re.compile(rb"ALTER ROLE " + _IDENT + rb" WITH .* PASSWORD '")
_MEMBERSHIP = re.compile(rb"GRANT " + _IDENT + rb"(?:, " + _IDENT + rb")* TO ")
_RESTRICT = re.compile(rb"\\(restrict|unrestrict) (\S+)\s*")
LINE_CAP = 1 << 20


def sniff(head: bytes) -> bool:
    return head.startswith(_START)


def _ident(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


class PgGlobalsChecker(FormatChecker):
    """Checks a ``pg_dumpall --globals-only`` script and lists the roles and tablespaces it creates."""

    format = "pg-globals"

    def __init__(self) -> None:
        self._error: str | None = None
        self._bytes = 0
        self._line = bytearray()
        self._lineno = 0
        self._complete = False
        self._restrict: bytes | None = None
        self._restrict_line = 0
        self._unrestricted = False
        self._roles: list[str] = []
        self._tablespaces: list[str] = []
        self._memberships = 0
        self._role_settings = 0
        self._statements = 0
        self._passwords = False

    def feed(self, data: bytes) -> None:
        if self._error is not None or not data:
            return
        data = bytes(data)
        self._bytes += len(data)
        pos = 0
        while self._error is None:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._keep(data[pos:])
                return
            if self._line:
                self._keep(data[pos:nl])
                line = bytes(self._line)
                self._line.clear()
            else:
                line = data[pos : min(nl, pos + LINE_CAP)]
            pos = nl + 1
            self._on_line(line)

    def _keep(self, piece: bytes) -> None:
        room = LINE_CAP - len(self._line)
        if room > 0:
            self._line += piece[:room]

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = message

    def _on_line(self, line: bytes) -> None:
        self._lineno += 1
        line = line.removesuffix(b"\r")
        if self._lineno <= len(HEADER):
            if line != HEADER[self._lineno - 1]:
                shown = line[:60].decode("utf-8", "replace")
                self._fail(f"line {self._lineno}: not a pg_dumpall cluster dump header: {shown!r}")
            return
        if not line.strip():
            return
        if line.startswith(b"--"):
            if line == _COMPLETE:
                self._complete = True
            return
        if line.startswith(b"\\") and (m := _RESTRICT.fullmatch(line)):
            self._meta(m.group(1), m.group(2))
            return
        if self._unrestricted:
            self._fail(f"line {self._lineno}: a statement after \\unrestrict")
            return
        self._complete = False  # that comment was inside a string literal, not the end
        self._statement(line)

    def _meta(self, command: bytes, key: bytes) -> None:
        if command == b"restrict":
            if self._restrict is not None:
                self._fail(f"line {self._lineno}: a second \\restrict (the first is at line {self._restrict_line})")
            self._restrict, self._restrict_line = key, self._lineno
        elif self._restrict is None:
            self._fail(f"line {self._lineno}: \\unrestrict without a \\restrict")
        elif key != self._restrict:
            self._fail(
                f"line {self._lineno}: \\unrestrict key differs from that of \\restrict (line {self._restrict_line})"
            )
        else:
            self._unrestricted = True

    def _statement(self, line: bytes) -> None:
        self._statements += 1
        if m := _CREATE_ROLE.fullmatch(line):
            self._roles.append(_ident(m.group(1)))
        elif m := _CREATE_TABLESPACE.match(line):
            self._tablespaces.append(_ident(m.group(1)))
        elif _ROLE_SETTING.match(line):
            self._role_settings += 1
        elif _MEMBERSHIP.match(line):
            self._memberships += 1
        if not self._passwords and _PASSWORD.match(line):
            self._passwords = True

    def finish(self) -> CheckResult:
        if self._line and self._error is None:
            line = bytes(self._line)
            self._line.clear()
            self._on_line(line)
        errors: list[str] = []
        if self._error is not None:
            errors.append(self._error)
        elif self._bytes == 0:
            errors.append("empty stream: no pg_dumpall header")
        elif self._lineno < len(HEADER):
            errors.append("truncated: the stream ends inside the pg_dumpall header comment")
        elif not self._complete:
            errors.append(
                "no '-- PostgreSQL database cluster dump complete' comment at the end: dump truncated or failed"
            )
        elif self._restrict is not None and not self._unrestricted:
            errors.append(f"\\restrict at line {self._restrict_line} has no \\unrestrict: dump truncated")
        stats: dict[str, Any] = {
            "roles": sorted(self._roles),
            "tablespaces": sorted(self._tablespaces),
            "memberships": self._memberships,
            "role_settings": self._role_settings,
            "statements": self._statements,
        }
        facts: dict[str, Any] = {"role_passwords": self._passwords, "restrict": self._restrict is not None}
        return CheckResult(format=self.format, ok=not errors, errors=errors, stats=stats, facts=facts)


def describe(result: CheckResult) -> list[str]:
    stats = result.stats
    lines = ["pg_dumpall --globals-only script (roles, memberships, tablespaces)"]
    lines.append("status: OK" if result.ok else "status: FAILED")
    lines += [f"error: {e}" for e in result.errors]
    lines.append(f"roles: {', '.join(stats.get('roles', [])) or '-'}")
    lines.append(f"tablespaces: {', '.join(stats.get('tablespaces', [])) or '-'}")
    lines.append(
        f"{stats.get('memberships', 0)} role memberships, {stats.get('role_settings', 0)} role settings, "
        f"{stats.get('statements', 0)} statements; role passwords "
        f"{'included' if result.facts.get('role_passwords') else 'not included'}"
    )
    return lines
