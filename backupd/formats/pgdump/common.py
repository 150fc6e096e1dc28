"""What both pg_dump readers share: the names they list in their stats and how they spell an entry."""

from __future__ import annotations

import re

# TOC entry kinds listed by name in the stats (the "objects" counts cover every kind)
LISTED = {
    "SCHEMA": "schemas",
    "VIEW": "views",
    "MATERIALIZED VIEW": "materialized_views",
    "FUNCTION": "functions",
    "PROCEDURE": "procedures",
    "SEQUENCE": "sequences",
    "TRIGGER": "triggers",
}
SETVAL = re.compile(r"SELECT pg_catalog\.setval\('(?:[^']|'')*', (-?\d+), (?:true|false)\);")


def entry_name(namespace: str | None, tag: str | None) -> str:
    """ "schema.tag" as pg_dump tags its entries (a function's tag carries its argument types)."""
    tag = tag or ""
    return f"{namespace}.{tag}" if namespace else tag
