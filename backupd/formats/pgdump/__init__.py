"""Streaming checks of pg_dump output: custom-format archives (``pg_dump -Fc``) and plain SQL scripts.

Restore drills compare a restored database against the row counts recorded at dump time, so both
checkers count rows exactly, per table, in one pass beside the compressor. One module per job:

* toc.py: the custom format's header and TOC, element by element (`TocReader`, `sniff`);
* blocks.py: its data area, every block through to the end, rows counted from the COPY data;
* custom.py: `PgCustomChecker`, the two above as one `FormatChecker`;
* plain.py: `PgPlainChecker` (header, COPY rows, the completion trailer and ``\\restrict`` keys);
* describe.py: the `backupd inspect` summary of either.

Names in the stats are "schema.tag" as pg_dump tags its entries (a function's tag carries its argument
types, a trigger's is "table trigger"), which the plain format's ``-- Name:`` comments repeat, so both
formats of one database give the same stats. docs/formats-pgdump.md has the byte layout and the reasons
for each check.
"""

from __future__ import annotations

from .custom import PgCustomChecker
from .describe import describe
from .plain import PgPlainChecker, sniff_plain
from .toc import sniff

__all__ = ["PgCustomChecker", "PgPlainChecker", "describe", "sniff", "sniff_plain"]
