"""Restoring and drilling an RDB: write it for a server to load, or load it into a scratch redis-server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

from backupd.engine.compression import iter_chunks, open_decompressed
from backupd.errors import BackupdError
from backupd.fsutil import FILE_MODE
from backupd.scratch.redis import Redis
from backupd.sources.base import (
    Check,
    DrillContext,
    DrillResult,
    Progress,
    Restored,
    artifacts,
    compare,
    no_progress,
)
from backupd.store.backups import StoredBackup


def write_rdb(path: Path, dest_dir: Path, *, yes: bool, progress: Progress = no_progress) -> Path:
    """Decompress the RDB to `dest_dir/dump.rdb` (via a temp name + rename, so a server never sees half)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / "dump.rdb"
    if final.exists() and not yes:
        raise BackupdError(f"restore: {final} exists; use --yes to replace it")
    tmp = dest_dir / ".dump.rdb.restoring"
    tmp.unlink(missing_ok=True)  # a leftover could have looser permissions: never write into it
    try:
        _, stream = open_decompressed(path)
        # 0600 from the first byte: the RDB holds every value of the database
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with stream, os.fdopen(fd, "wb") as fh:
            for chunk in iter_chunks(stream):
                fh.write(chunk)
                progress(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def redis_live_steps(uri: str, job: str, backup_id: str, rdb: str, *, encrypted: bool) -> str:
    """A live Redis cannot load an RDB without a restart: say exactly what to do instead.

    An encrypted backup's stored file is age ciphertext that no Redis can load: step 1 decrypts it (with the
    identity) into the plaintext dump.rdb, and only that file is ever copied into place."""
    if encrypted:
        first = (
            f"  1. backupd restore {job} --backup {backup_id} --to /some/dir --identity FILE\n"
            f"     (decrypts {rdb} on the fly with the age identity and writes the plaintext dump.rdb;\n"
            "     the stored .age file is ciphertext Redis cannot load: never copy it into place)\n"
        )
    else:
        first = f"  1. backupd restore {job} --backup {backup_id} --to /some/dir   (writes dump.rdb from {rdb})\n"
    return (
        f"restore: a running Redis ({uri}) cannot load an RDB while it runs. Steps:\n"
        + first
        + "  2. on the Redis host: redis-cli CONFIG GET dir; CONFIG GET dbfilename; CONFIG GET appendonly\n"
        "  3. stop redis-server (systemctl stop redis-server), so it does not save over the file\n"
        "  4. copy that dump.rdb to <dir>/<dbfilename> (owner redis:redis, mode 0600)\n"
        "  5. if appendonly is yes: move the appendonly dir aside, start with appendonly no, then run\n"
        "     redis-cli CONFIG SET appendonly yes once loaded (else Redis loads the AOF, not the RDB)\n"
        "  6. start redis-server; check INFO persistence (loading:0) and DBSIZE against backupd show\n"
        "  7. replicas resync from the restored master on their own"
    )


class RdbRedis(Redis):
    """A throwaway redis-server that loads one RDB file at start-up (PING answers only once loaded)."""

    ready_timeout: ClassVar[float] = 1800.0

    def __init__(self, rdb: Path, base_dir: Path | None = None) -> None:
        super().__init__(base_dir)
        self.source_rdb = rdb

    def _prepare(self) -> None:
        super()._prepare()
        if not self.rdb_path.exists():
            _, stream = open_decompressed(self.source_rdb)
            with stream, self.rdb_path.open("wb") as fh:
                for chunk in iter_chunks(stream):
                    fh.write(chunk)


def expected_redis_keys(art: dict[str, Any], manifest: dict[str, Any]) -> int:
    """redis-check-rdb's key count when the source recorded one, else the RDB's RESIZEDB hints."""
    for facts in (art.get("facts", {}), manifest.get("facts", {}), art.get("stats", {})):
        for key in ("keys_read", "check_rdb_keys", "keys"):
            value = facts.get(key) if isinstance(facts, dict) else None
            if isinstance(value, int):
                return value
    return sum(int(v) for v in art.get("stats", {}).get("keys_hint", {}).values())


def drill_redis(backup: StoredBackup, ctx: DrillContext) -> DrillResult:
    """Load each RDB into a scratch redis-server and compare the keys it loaded with the dump's count."""
    checks: list[Check] = []
    seconds = 0.0
    for art in artifacts(backup, "redis-rdb"):
        began = time.monotonic()
        server = ctx.stack.enter_context(RdbRedis(backup.path / art["file"], base_dir=ctx.work))
        seconds += time.monotonic() - began
        with server.client() as conn:
            info: dict[str, Any] = conn.info("persistence")
            if "rdb_last_load_keys_loaded" in info:
                loaded = int(info["rdb_last_load_keys_loaded"]) + int(info.get("rdb_last_load_keys_expired", 0))
            else:
                keyspace: dict[str, Any] = conn.info("keyspace")
                loaded = sum(int(v.get("keys", 0)) for v in keyspace.values() if isinstance(v, dict))
        checks.append(compare("redis keys loaded+expired", expected_redis_keys(art, backup.manifest), loaded))
    return DrillResult(checks, seconds)


def restore_rdb(backup: StoredBackup, dest_dir: Path, *, yes: bool, progress: Progress = no_progress) -> Restored:
    """The backup's RDB as `dest_dir/dump.rdb`, for a stopped server to load at start-up."""
    began = time.monotonic()
    art = artifacts(backup, "redis-rdb")[0]
    final = write_rdb(backup.path / art["file"], dest_dir, yes=yes, progress=progress)
    keys = sum(int(v) for v in art.get("stats", {}).get("keys_hint", {}).values())
    return Restored(art["file"], str(final), {"keys": keys}, time.monotonic() - began)
