"""What `backupd inspect` prints for a pg_dump archive or script, from its checker's result."""

from __future__ import annotations

from ..base import CheckResult
from .common import LISTED


def describe(result: CheckResult) -> list[str]:
    """Human-readable summary for `backupd inspect` (either pg_dump format)."""
    facts, stats = result.facts, result.stats
    if result.format == "pg-custom":
        head = f"pg_dump custom archive {facts.get('archive_version', '?')}"
    else:
        head = "pg_dump plain SQL script"
    if facts.get("database"):
        head += f" of database {facts['database']}"
    head += f", pg_dump {facts.get('pg_dump_version', '?')}, server {facts.get('server_version', '?')}"
    lines = [head]
    if result.format == "pg-custom":
        level = facts.get("compression_level")
        compression = str(facts.get("compression", "?"))
        if level not in (None, 0):
            compression += " (default level)" if level == -1 else f" (level {level})"
        offsets = {"set": "set (written to a file)", "not set": "not set (written to a pipe)"}
        lines.append(
            f"created {facts.get('created', '?')} (dumper's local time), compression {compression}, "
            f"data offsets {offsets.get(facts.get('toc_offsets') or '', facts.get('toc_offsets') or '-')}"
        )
    elif "restrict" in facts:
        lines.append("wrapped in \\restrict ... \\unrestrict (pg_dump 15.14+)")
    lines.append("status: OK" if result.ok else "status: FAILED")
    lines += [f"error: {e}" for e in result.errors]
    lines += [f"warning: {w}" for w in result.warnings]
    tables: dict[str, int] = stats.get("tables", {})
    summary = f"{len(tables)} tables, {stats.get('rows', 0)} rows, {stats.get('large_objects', 0)} large objects"
    if "toc_entries" in stats:
        summary = f"{stats['toc_entries']} TOC entries, {stats.get('data_blocks', 0)} data blocks; " + summary
    lines.append(summary)
    width = max((len(name) for name in tables), default=0)
    lines += [f"  {name:<{width}}  {rows:>12} rows" for name, rows in tables.items()]
    if stats.get("uncounted_tables"):
        lines.append(f"rows not counted: {', '.join(stats['uncounted_tables'])}")
    values: dict[str, int] = stats.get("sequence_values", {})
    for label in LISTED.values():
        names: list[str] = stats.get(label, [])
        if label == "sequences":
            names = [f"{n} = {values[n]}" if n in values else n for n in names]
        lines.append(f"{label.replace('_', ' ')}: {', '.join(names) if names else '-'}")
    return lines
