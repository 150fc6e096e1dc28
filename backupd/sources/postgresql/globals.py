"""Applying a backup's globals (`pg_dumpall --globals-only`) to a target: only for roles it lacks.
(Their streaming check is `backupd/formats/pgglobals.py`.)

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
