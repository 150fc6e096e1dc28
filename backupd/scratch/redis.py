"""A throwaway redis-server (master or replica) on a loopback port."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis as redis_lib

from backupd.scratch.base import ScratchError, ScratchServer, _write_private, require_binary


def _redis_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Redis(ScratchServer):
    """`redis-server` with no persistence of its own; a replica of `master` when one is given.

    The config (password included) is a 0600 file, not argv. RDB files land in `dir` as `dump.rdb`.
    """

    name = "redis"

    def __init__(
        self,
        base_dir: Path | None = None,
        master: Redis | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, extra_args)
        self.master = master
        self.password = password
        self._server = ""

    @property
    def rdb_path(self) -> Path:
        return self.dir / "dump.rdb"

    def client(self, **kwargs: Any) -> redis_lib.Redis:
        import redis

        options: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 5}
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, password=self.password, **options)

    def wait_replica_linked(self, timeout: float = 15.0) -> None:
        """Poll INFO replication until `master_link_status:up` (the initial sync has finished)."""
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        with self.client() as conn:
            while True:
                with contextlib.suppress(OSError, ConnectionError):
                    info = conn.info("replication")
                    if info.get("master_link_status") == "up":
                        return
                if time.monotonic() > deadline:
                    raise ScratchError(
                        f"scratch: redis replica on port {self.port} not linked within {timeout:.0f}s "
                        f"(master_link_status={info.get('master_link_status')!r})"
                    )
                time.sleep(0.05)

    def _prepare(self) -> None:
        self._server = require_binary("redis-server", "Debian's redis-server")
        if self.master is not None and not self.master.port:
            raise ScratchError("scratch: start the redis master before its replica")

    def _argv(self) -> list[str]:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f"dir {_redis_value(str(self.dir))}",
            "dbfilename dump.rdb",
            'save ""',
            "appendonly no",
            "daemonize no",
            'logfile ""',
            "repl-diskless-sync no",
            "repl-diskless-sync-delay 0",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_redis_value(self.password)}")
        if self.master is not None:
            lines.append(f"replicaof {self.master.host} {self.master.port}")
            if self.master.password is not None:
                lines.append(f"masterauth {_redis_value(self.master.password)}")
        conf = _write_private(self.dir / "redis.conf", "\n".join(lines) + "\n")
        return [self._server, str(conf), *self.extra_args]

    def _probe(self) -> bool:
        try:
            with self.client(socket_timeout=2, socket_connect_timeout=1) as conn:
                return bool(conn.ping())
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------------------------------


