"""The backup's globals (`pg_dumpall --globals-only`): checking them while they stream, and applying them
to a target only for the roles it lacks.

`PgGlobalsChecker` (format "pg-globals") reads the script as it streams: a ``-- PostgreSQL database cluster
dump`` header comment, a ``-- PostgreSQL database cluster dump complete`` comment at the end, and the
``\\restrict KEY`` ... ``\\unrestrict KEY`` pair 13.22+/14.19+/15.14+/16.10+/17.6+ write (pg_dumpall puts
``\\unrestrict`` before the completion comment, pg_dump after its own: either is accepted). stats: {"roles",
"tablespaces", "memberships", "role_settings", "statements"}; facts: {"role_passwords", "restrict"}. Lines
are read one at a time (each looked at only up to LINE_CAP), so memory is constant. It is pure (bytes in,
verdict out) and belongs in `backupd/formats/` once the formats registry lists it, so that `verify`,
`inspect` and drills re-check the artifact too.

A restore must never change a role the target already has (its password, attributes, memberships are
someone's live access), so `plan_globals` splits the script into statements and keeps only these:

* session `SET`s at the top;
* `CREATE ROLE r` for each role missing on the target, and every `ALTER ROLE r ...`, `COMMENT ON ROLE r`,
  `SECURITY LABEL ... ON ROLE r` for those roles only;
* `GRANT a, b TO r ...` memberships whose member `r` is one of them (their `GRANTED BY` dropped: the
  grantor of the original may not exist here, and the restoring user grants instead);
* `GRANT ... ON PARAMETER ... TO ...` whose grantees are all new roles.

Tablespaces are never created (their directories are the target host's business) and are listed as
skipped. The statements run in one transaction, so a failure leaves no half-created role behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from backupd.formats.base import CheckResult, FormatChecker

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_IDENT_RE = re.compile(_IDENT)
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({_IDENT})$", re.S)
_ROLE_STMT = re.compile(
    rf"^(?:ALTER ROLE|COMMENT ON ROLE|SECURITY LABEL FOR {_IDENT} ON ROLE) ({_IDENT})(?:\s|$)", re.S
)
_MEMBERSHIP = re.compile(rf"^GRANT ({_IDENT}(?:, {_IDENT})*) TO ({_IDENT})(.*)$", re.S)
_PARAM_GRANT = re.compile(rf"^GRANT .* ON PARAMETER .* TO ({_IDENT}(?:, {_IDENT})*)(?: WITH GRANT OPTION)?$", re.S)
_GRANTED_BY = re.compile(rf" GRANTED BY {_IDENT}$")
_TABLESPACE = re.compile(
    r"^(?:CREATE|ALTER|COMMENT ON|GRANT .* ON|REVOKE .* ON|SECURITY LABEL .* ON) TABLESPACE\b", re.S
)


def unquote_ident(raw: str) -> str:
    return raw[1:-1].replace('""', '"') if raw.startswith('"') else raw


def idents(raw: str) -> list[str]:
    return [unquote_ident(m.group(0)) for m in _IDENT_RE.finditer(raw)]


def split_statements(sql: str) -> list[str]:
    """The script's SQL statements (without their `;`): quotes respected, `--` comments and psql's
    `\\restrict` / `\\unrestrict` lines (which are not SQL) left out."""
    out: list[str] = []
    buf: list[str] = []
    empty = True  # nothing but whitespace in `buf`
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "\\" and empty and (i == 0 or sql[i - 1] == "\n"):  # a psql meta-command line
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in "'\"":
            end = i + 1
            while True:
                end = sql.find(c, end)
                if end < 0:
                    end = n
                    break
                if sql.startswith(c * 2, end):
                    end += 2
                    continue
                break
            buf.append(sql[i : end + 1])
            empty = False
            i = end + 1
            continue
        if c == ";":
            if not empty:
                out.append("".join(buf).strip())
            buf, empty = [], True
        else:
            buf.append(c)
            empty = empty and c.isspace()
        i += 1
    if not empty:
        out.append("".join(buf).strip())
    return out


@dataclass
class GlobalsPlan:
    statements: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # roles the script creates
    kept: list[str] = field(default_factory=list)  # roles the target already has: left untouched
    skipped: list[str] = field(default_factory=list)  # statements left out, first words only

    @property
    def script(self) -> str:
        return "".join(s + ";\n" for s in self.statements)


def plan_globals(sql: str, existing_roles: set[str]) -> GlobalsPlan:
    """The statements of `sql` that create the roles missing from `existing_roles` (see the module doc)."""
    statements = split_statements(sql)
    plan = GlobalsPlan()
    new: set[str] = set()
    for stmt in statements:
        m = _CREATE_ROLE.match(stmt)
        if m:
            role = unquote_ident(m.group(1))
            (plan.kept if role in existing_roles else plan.created).append(role)
            if role not in existing_roles:
                new.add(role)
    for stmt in statements:
        keep = False
        if stmt.startswith(("SET ", "SELECT pg_catalog.set_config(")):
            keep = True
        elif m := _CREATE_ROLE.match(stmt):
            keep = unquote_ident(m.group(1)) in new
        elif _TABLESPACE.match(stmt):
            plan.skipped.append(_head(stmt))
        elif m := _ROLE_STMT.match(stmt):
            keep = unquote_ident(m.group(1)) in new
        elif m := _MEMBERSHIP.match(stmt):
            if unquote_ident(m.group(2)) in new:
                stmt = _GRANTED_BY.sub("", stmt)
                keep = True
        elif m := _PARAM_GRANT.match(stmt):
            keep = bool(new) and set(idents(m.group(1))) <= new
        else:
            plan.skipped.append(_head(stmt))
        if keep:
            plan.statements.append(stmt)
    if not new:
        plan.statements = []
    return plan


def _head(stmt: str) -> str:
    return " ".join(stmt.split()[:4])


# ------------------------------------------------------------------ the streaming check

GLOBALS_HEADER = (b"--", b"-- PostgreSQL database cluster dump", b"--")
_GLOBALS_START = b"--\n-- PostgreSQL database cluster dump\n--\n"
_GLOBALS_COMPLETE = b"-- PostgreSQL database cluster dump complete"
_RAW_IDENT = rb'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_RAW_CREATE_ROLE = re.compile(rb"CREATE ROLE (" + _RAW_IDENT + rb");")
_RAW_CREATE_TABLESPACE = re.compile(rb"CREATE TABLESPACE (" + _RAW_IDENT + rb") ")
_RAW_ROLE_SETTING = re.compile(rb"ALTER ROLE " + _RAW_IDENT + rb" (?:IN DATABASE " + _RAW_IDENT + rb" )?SET ")
_RAW_PASSWORD = re.compile(rb"ALTER ROLE " + _RAW_IDENT + rb" WITH .* PASSWORD '")
_RAW_MEMBERSHIP = re.compile(rb"GRANT " + _RAW_IDENT + rb"(?:, " + _RAW_IDENT + rb")* TO ")
_RAW_RESTRICT = re.compile(rb"\\(restrict|unrestrict) (\S+)\s*")
LINE_CAP = 1 << 20


def sniff_globals(head: bytes) -> bool:
    return head.startswith(_GLOBALS_START)


def _raw_ident(raw: bytes) -> str:
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
        if self._lineno <= len(GLOBALS_HEADER):
            if line != GLOBALS_HEADER[self._lineno - 1]:
                shown = line[:60].decode("utf-8", "replace")
                self._fail(f"line {self._lineno}: not a pg_dumpall cluster dump header: {shown!r}")
            return
        if not line.strip():
            return
        if line.startswith(b"--"):
            if line == _GLOBALS_COMPLETE:
                self._complete = True
            return
        if line.startswith(b"\\") and (m := _RAW_RESTRICT.fullmatch(line)):
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
        if m := _RAW_CREATE_ROLE.fullmatch(line):
            self._roles.append(_raw_ident(m.group(1)))
        elif m := _RAW_CREATE_TABLESPACE.match(line):
            self._tablespaces.append(_raw_ident(m.group(1)))
        elif _RAW_ROLE_SETTING.match(line):
            self._role_settings += 1
        elif _RAW_MEMBERSHIP.match(line):
            self._memberships += 1
        if not self._passwords and _RAW_PASSWORD.match(line):
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
        elif self._lineno < len(GLOBALS_HEADER):
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


def describe_globals(result: CheckResult) -> list[str]:
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
