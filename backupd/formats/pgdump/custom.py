"""`PgCustomChecker`: a ``pg_dump --format=custom`` stream, checked and counted in one pass.

The header and TOC (toc.py) come first, then every data block in TOC order (blocks.py). The TOC is
written before the data, so a dump written to a pipe has no data offsets (flag 1) and only one written
to a seekable file gets them filled in afterwards (flag 2); both are accepted, and a real offset must be
where its block starts. There is no trailer: a truncated archive shows up as a block cut short or as
data entries whose block never came. docs/formats-pgdump.md has the byte layout and the reasons.
"""

from __future__ import annotations

from typing import Any

from ..base import CheckResult, FormatChecker
from .blocks import BlockWalker
from .toc import TocReader


class PgCustomChecker(FormatChecker):
    """Checks a ``pg_dump --format=custom`` stream and counts its rows and large objects.

    stats: {"tables": {"schema.table": rows}, "rows": total, "large_objects": n, "toc_entries": n,
    "objects": {desc: count}, "data_blocks": n, "schemas"/"views"/"materialized_views"/"functions"/
    "procedures"/"sequences"/"triggers": ["schema.tag", ...], "sequence_values": {"schema.seq": value}}.
    Tables whose rows could not be counted (lz4/zstd data, --inserts) are in "uncounted_tables" instead
    of "tables". facts: database, server_version, pg_dump_version, archive_version, compression
    (none/gzip/lz4/zstd; gzip is zlib streams), compression_level (archives before 1.15), created (the
    dumper's local time), toc_offsets (set: written to a file; not set: written to a pipe), encoding,
    int_size, offset_size.

    Memory: one small record per TOC entry (names, for the stats), the TOC string being read (at most
    STR_CAP) and one block's zlib state; nothing grows with the data.
    """

    format = "pg-custom"

    def __init__(self) -> None:
        self._toc = TocReader()
        self._walker: BlockWalker | None = None
        self._result: CheckResult | None = None
        self._base = 0  # stream offset of the current feed's first byte

    @property
    def _error(self) -> str | None:
        walker = self._walker
        return self._toc.error or (walker.error if walker is not None else None)

    def feed(self, data: bytes) -> None:
        if self._result is not None or not data or self._error is not None:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        walker = self._walker
        pos = 0
        if walker is None:
            pos = self._toc.feed(data)
            if self._toc.done and self._toc.error is None:
                walker = self._walker = BlockWalker(self._toc)
        if walker is not None and pos < len(data):
            walker.feed(data, pos, self._base)
        self._base += len(data)

    def finish(self) -> CheckResult:
        if self._result is None:
            if self._error is None:
                self._check_end()
            error = self._error
            errors = [] if error is None else [error]
            warnings = list(self._toc.warnings) + (self._walker.warnings if self._walker is not None else [])
            self._result = CheckResult(
                format=self.format,
                ok=not errors,
                errors=errors,
                warnings=warnings,
                stats=self._stats(),
                facts=dict(self._toc.facts),
            )
        return self._result

    def _check_end(self) -> None:
        total = self._base
        toc = self._toc
        if self._walker is not None:
            self._walker.check_end(total)
        elif total == 0:
            toc.error = "empty stream: no pg_dump archive header"
        else:
            toc.error = f"truncated: the stream ends at offset {total}, inside {toc.where}"

    def _stats(self) -> dict[str, Any]:
        toc, walker = self._toc, self._walker
        tables = dict(sorted(walker.tables.items())) if walker is not None else {}
        stats: dict[str, Any] = {
            "tables": tables,
            "rows": sum(tables.values()),
            "large_objects": walker.large_objects if walker is not None else 0,
            "toc_entries": sum(toc.objects.values()),
            "data_blocks": walker.blocks if walker is not None else 0,
            "objects": dict(sorted(toc.objects.items())),
        }
        if walker is not None and walker.uncounted:
            stats["uncounted_tables"] = sorted(walker.uncounted)
        stats.update({key: sorted(names) for key, names in toc.names.items()})
        stats["sequence_values"] = dict(sorted(toc.sequence_values.items()))
        return stats
