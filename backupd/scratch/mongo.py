"""A throwaway MongoDB wire-protocol server (the nx-27017 stand-in) on a loopback port."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pymongo import MongoClient

from backupd.scratch.base import ScratchError, ScratchServer, require_binary

MongoKind = Literal["mongod", "nx-27017"]


class MongoServer(ScratchServer):
    """A real `mongod` when one is on PATH, else nx-27017 (MongoDB wire protocol over SQLite).

    nx-27017 has known gaps (e.g. collection options and index directions do not round-trip); `kind`
    tells tests which one they got.
    """

    name = "mongo"

    def __init__(
        self,
        base_dir: Path | None = None,
        kind: Literal["auto", "mongod", "nx-27017"] = "auto",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, extra_args)
        if kind == "auto":
            kind = "mongod" if shutil.which("mongod") else "nx-27017"
        self.kind: MongoKind = kind
        self._mongod = ""

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def dbpath(self) -> Path:
        return self.dir / "db"

    def client(self, **kwargs: Any) -> MongoClient[dict[str, Any]]:
        from pymongo import MongoClient

        options: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "directConnection": True}
        options.update(kwargs)
        return MongoClient(self.uri, **options)

    def _prepare(self) -> None:
        if self.kind == "mongod":
            self._mongod = require_binary("mongod", "MongoDB's mongod")
        elif importlib.util.find_spec("nx_27017") is None:
            raise ScratchError(
                "scratch: no mongod on PATH and no nx-27017 stand-in: install mongod (or the stand-in: "
                "pip install 'backupd[demo]'), or set [drill] target"
            )
        self.dbpath.mkdir(exist_ok=True)

    def _argv(self) -> list[str]:
        if self.kind == "mongod":
            base = [self._mongod, "--dbpath", str(self.dbpath), "--port", str(self.port)]
            return [*base, "--bind_ip", self.host, "--nounixsocket", *self.extra_args]
        return [
            sys.executable,
            "-m",
            "nx_27017.nx_27017",
            "--data-dir",
            str(self.dbpath),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-file",
            str(self.dir / "nx-27017.log"),
            "--pid-file",
            str(self.dir / "nx-27017.pid"),
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        try:
            with self.client(serverSelectionTimeoutMS=1000, connectTimeoutMS=1000) as conn:
                conn.admin.command("ping")
                return True
        except Exception:
            return False
