"""What `backupd inspect` prints for a mongodump archive: header facts and one line per namespace."""

from __future__ import annotations

from typing import Any

from backupd.formats.base import CheckResult


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def describe(result: CheckResult) -> list[str]:
    """Human lines for `backupd inspect`: the header facts, then one line per namespace.

    Errors and warnings are not repeated here; the caller prints them from the result.
    """
    facts, stats = result.facts, result.stats
    lines = [
        f"mongodump archive: server {facts.get('server_version', '?')}, "
        f"tool {facts.get('tool_version', '?')}, {facts.get('concurrent_collections', '?')} parallel "
        f"collections; {stats.get('documents', 0)} documents in "
        f"{len(stats.get('namespaces', {}))} namespaces"
    ]
    namespaces: dict[str, dict[str, Any]] = stats.get("namespaces", {})
    width = max((len(k) for k in namespaces), default=0)
    for key, ns in namespaces.items():
        line = (
            f"  {key:<{width}}  {ns['type']:<10}  {ns['documents']:>10} docs  "
            f"{_human_bytes(ns['bytes']):>10}  crc {ns['crc']}"
        )
        if "data_namespace" in ns:
            line += f"  (data in {ns['data_namespace']})"
        lines.append(line)
    oplog = facts.get("oplog")
    if oplog:
        first, last = oplog.get("first_ts"), oplog.get("last_ts")
        span = f"{first['t']}:{first['i']} .. {last['t']}:{last['i']}" if first and last else "unknown"
        lines.append(f"  oplog: {oplog['entries']} entries, ts {span}")
    return lines

