"""Oplog replay after a restore: entries spooled to an unlinked temp file, then applied in order under the renames."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import bson
from bson.timestamp import Timestamp

from backupd.errors import StepError
from backupd.sources.mongo.native.connection import SKIP_DBS, Client
from backupd.sources.mongo.native.namespaces import split_ns


class _Spool:
    """Oplog entries parked in an unlinked temp file until the archive is known to be intact."""

    def __init__(self, tmp_dir: Path | None) -> None:
        self.fh: IO[bytes] = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 - closed by the restore
        self.count = 0

    def add(self, raw: bytes) -> None:
        self.fh.write(raw)
        self.count += 1

    def __iter__(self) -> Iterator[bytes]:
        self.fh.seek(0)
        while head := self.fh.read(4):
            size = struct.unpack("<i", head)[0]
            yield head + self.fh.read(size - 4)



class OplogApplyError(Exception):
    pass


def diff_to_updates(diff: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Translate a `$v: 2` oplog diff into update documents applied in order.

    Fields: `u` updated and `i` inserted fields ($set), `d` deleted ($unset), `s<field>` a nested diff;
    array diffs (`a: true`) have `l` (new length: truncation, applied first), `u<idx>`, `s<idx>`.
    """
    first: list[dict[str, Any]] = []
    sets: dict[str, Any] = {}
    unsets: dict[str, Any] = {}
    later: list[dict[str, Any]] = []
    is_array = diff.get("a") is True
    for key, value in diff.items():
        if is_array:
            if key == "a":
                continue
            if key == "l":
                first.append({"$push": {prefix.rstrip("."): {"$each": [], "$slice": int(value)}}})
            elif key.startswith("u"):
                sets[prefix + key[1:]] = value
            elif key.startswith("s"):
                later += diff_to_updates(value, f"{prefix}{key[1:]}.")
            else:
                raise OplogApplyError(f"unknown array diff field {key!r}")
        elif key in ("u", "i"):
            sets.update({prefix + k: v for k, v in value.items()})
        elif key == "d":
            unsets.update({prefix + k: "" for k in value})
        elif key.startswith("s"):
            later += diff_to_updates(value, f"{prefix}{key[1:]}.")
        else:
            raise OplogApplyError(f"unknown diff field {key!r}")
    update: dict[str, Any] = {}
    if sets:
        update["$set"] = sets
    if unsets:
        update["$unset"] = unsets
    return first + ([update] if update else []) + later


def apply_op(client: Client, op: Mapping[str, Any], rename: Callable[[str], str]) -> bool:
    """Apply one decoded oplog entry as applyOps would (inserts upsert); False if it was skipped."""
    kind = op.get("op")
    ns = str(op.get("ns", ""))
    if kind == "n" or not ns:
        return False
    if kind == "c":
        o = op.get("o") or {}
        if "applyOps" in o:
            return any([apply_op(client, inner, rename) for inner in o["applyOps"]])
        raise OplogApplyError(
            f"oplog command {next(iter(o), '?')!r} on {ns} is not supported by the native restore; use mongorestore"
        )
    target = split_ns(rename(ns))
    if target.db in SKIP_DBS or target.collection.startswith("system."):
        return False
    coll = client[target.db][target.collection]
    o = dict(op.get("o") or {})
    if kind == "i":
        coll.replace_one({"_id": o["_id"]}, o, upsert=True)
    elif kind == "d":
        coll.delete_one(o)
    elif kind == "u":
        query = dict(op.get("o2") or {})
        if o.get("$v") == 2 and "diff" in o:
            for update in diff_to_updates(o["diff"]):
                coll.update_one(query, update)
        elif any(k.startswith("$") for k in o):
            o.pop("$v", None)
            coll.update_one(query, o)
        else:
            coll.replace_one(query, o)
    else:
        raise OplogApplyError(f"unknown oplog op {kind!r} on {ns}")
    return True


def replay_oplog(client: Client, entries: _Spool | Sequence[bytes], rename: Callable[[str], str]) -> int:
    """Apply captured entries in order (the archive's CRC was verified before this runs)."""
    applied = 0
    for raw in entries:
        op = bson.decode(raw)
        try:
            applied += apply_op(client, op, rename)
        except (OplogApplyError, KeyError) as exc:
            ts = op.get("ts")
            when = f"{ts.time}:{ts.inc}" if isinstance(ts, Timestamp) else "?"
            raise StepError("oplog replay", f"entry ts {when}: {exc}") from None
    return applied
