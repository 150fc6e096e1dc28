"""Namespace patterns as mongodump and mongorestore take them: ``--nsInclude``-style filters and ``--nsFrom``/``--nsTo``
renames.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backupd.errors import UsageError
from backupd.formats.mongo_archive import Namespace


def ns_pattern(pattern: str) -> re.Pattern[str]:
    """mongodump --nsInclude/--nsExclude: `*` matches any run of characters, `\\` escapes the next one."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class NsFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, ns: str) -> bool:
        if self.include and not any(ns_pattern(p).fullmatch(ns) for p in self.include):
            return False
        return not any(ns_pattern(p).fullmatch(ns) for p in self.exclude)


# the default filter: every namespace (a frozen dataclass, so one shared instance is safe)
ALL_NAMESPACES = NsFilter()

_VAR = re.compile(r"\$([A-Za-z0-9_]+)\$")


class NsRenamer:
    """mongorestore --nsFrom/--nsTo: `$name$` in a source pattern captures any text, reused in the target.

    Several pairs may be given; the first source pattern that matches the whole namespace wins. `\\`
    escapes a literal character. A namespace no pattern matches keeps its name.
    """

    def __init__(self, sources: Sequence[str], targets: Sequence[str]) -> None:
        if len(sources) != len(targets):
            raise UsageError("ns_from and ns_to need the same number of patterns")
        self.rules: list[tuple[re.Pattern[str], str]] = []
        for src, dst in zip(sources, targets, strict=True):
            src_vars, dst_vars = _VAR.findall(src), _VAR.findall(dst)
            if sorted(src_vars) != sorted(set(src_vars)) or set(src_vars) != set(dst_vars):
                raise UsageError(f"ns_from {src!r} and ns_to {dst!r} must use the same $variables$, once each")
            self.rules.append((self._compile(src), dst))

    @staticmethod
    def _compile(src: str) -> re.Pattern[str]:
        out, i = [], 0
        while i < len(src):
            m = _VAR.match(src, i)
            if m:
                out.append(f"(?P<{m.group(1)}>.*?)")
                i = m.end()
                continue
            if src[i] == "\\" and i + 1 < len(src):
                out.append(re.escape(src[i + 1]))
                i += 2
                continue
            out.append(re.escape(src[i]))
            i += 1
        return re.compile("".join(out), re.DOTALL)

    def __call__(self, ns: str) -> str:
        for rx, dst in self.rules:
            m = rx.fullmatch(ns)
            if m:
                return _expand(dst, m.groupdict())
        return ns


def _expand(template: str, values: Mapping[str, str]) -> str:
    return _VAR.sub(lambda v: values[v.group(1)], template)


def split_ns(ns: str) -> Namespace:
    db, sep, coll = ns.partition(".")
    if not sep or not db or not coll:
        raise UsageError(f"namespace {ns!r} must be DB.COLLECTION")
    return Namespace(db, coll)
