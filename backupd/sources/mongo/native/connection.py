"""Connections to MongoDB for the native engine: URIs without credentials, one-line error messages, server facts,
pinning a replica-set member.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from backupd.errors import StepError

RAW: Final = CodecOptions(document_class=RawBSONDocument)
DEFAULT_BATCH: Final = 1000
INSERT_BYTES: Final = 8 << 20  # well under the 48 MB wire limit, small enough to keep memory flat
SKIP_DBS: Final = frozenset({"local", "config"})  # mongodump skips them too
NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"
SELECTION_TIMEOUT_MS: Final = 15000
Client = MongoClient[dict[str, Any]]


def host_label(uri: str) -> str:
    """The hosts of a URI, without credentials or options, for error lines."""
    rest = uri.split("://", 1)[-1]
    hosts = re.split(r"[/?]", rest, maxsplit=1)[0]
    return hosts.rsplit("@", 1)[-1] or "?"


_AUTH_PARAM = re.compile(r"^auth(source|mechanism|mechanismproperties)=", re.IGNORECASE)


def strip_credentials(uri: str) -> str:
    """The URI without user and auth options: hello and buildInfo need no login, so a probe needs none."""
    scheme, sep, rest = uri.partition("://")
    hosts, slash, tail = rest.partition("/")
    hosts = hosts.rsplit("@", 1)[-1]
    path, _q, query = tail.partition("?")
    kept = [p for p in query.split("&") if p and not _AUTH_PARAM.match(p)]
    return f"{scheme}{sep}{hosts}{slash}{path}" + (f"?{'&'.join(kept)}" if kept else "")


def connect(uri: str, password: str | None = None, read_preference: str | None = None) -> Client:
    """A client for `uri`; the password is passed as a keyword, never put in the URI or argv."""
    opts: dict[str, Any] = {"appname": "backupd"}
    if password is not None:
        opts["password"] = password
    if read_preference:
        opts["readPreference"] = read_preference
    if "serverselectiontimeoutms" not in uri.lower():
        opts["serverSelectionTimeoutMS"] = SELECTION_TIMEOUT_MS
    try:
        return MongoClient(uri, **opts)
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise StepError("connect", f"invalid uri: {_first_line(exc)}", host=host_label(uri)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    text = text.split(", full error:")[0].split(" (configured timeouts:")[0].split(", Timeout:")[0]
    return " ".join(text.split())[:300]


def explain(exc: BaseException) -> str:
    """One line saying what went wrong talking to a server, in an operator's terms."""
    if isinstance(exc, OperationFailure):
        if exc.code == 18 or "authentication failed" in str(exc).lower():
            return "authentication failed (check the user in uri and password_file)"
        if exc.code == 13:
            return f"not authorized: {_first_line(exc)}"
        return _first_line(exc)
    if isinstance(exc, ConnectionFailure):
        return f"cannot reach the server: {_first_line(exc)}"
    if isinstance(exc, PyMongoError):
        return _first_line(exc)
    # pymongo lets some handshake failures escape as plain exceptions (e.g. a server without SASL)
    return f"connection handshake failed: {type(exc).__name__}: {_first_line(exc)}"


@contextlib.contextmanager
def mongo_step(step: str, host: str) -> Iterator[None]:
    """Turn any driver failure inside the block into one StepError line naming host and step."""
    try:
        yield
    except StepError:
        raise
    except (PyMongoError, KeyError, OSError) as exc:
        raise StepError(step, explain(exc), host=host) from None


@dataclass(frozen=True)
class ServerInfo:
    version: str
    set_name: str | None
    me: str | None
    secondary: bool

    @property
    def replica_set(self) -> bool:
        return self.set_name is not None


def server_info(client: Client) -> ServerInfo:
    """ping + hello (through the client's read preference) + buildInfo."""
    hello = client.admin.command("hello", read_preference=client.read_preference)
    version = str(client.admin.command("buildInfo", read_preference=client.read_preference)["version"])
    set_name = hello.get("setName")
    return ServerInfo(
        version=version,
        set_name=str(set_name) if set_name else None,
        me=hello.get("me"),
        secondary=bool(hello.get("secondary")),
    )


def pin_member(client: Client, info: ServerInfo, uri: str, password: str | None) -> Client:
    """A direct client to the one member the read preference chose, so data and oplog come from it."""
    if not info.replica_set or not info.me or "directconnection=true" in uri.lower():
        return client
    credentials = getattr(client.options, "credentials", None)
    direct = direct_uri(uri, info.me, getattr(credentials, "source", None))
    pinned = connect(direct, password, "secondaryPreferred")
    client.close()
    return pinned


def direct_uri(uri: str, member: str, auth_source: str | None = None) -> str:
    """`uri` pointed at one member (`host:port`) with directConnection=true, keeping its credentials, path
    and options. A `mongodb+srv://` URI implies TLS and may take authSource from DNS: both are written out,
    since a plain `mongodb://` URI would silently drop them."""
    scheme, rest = uri.split("://", 1)
    creds = rest.rsplit("@", 1)[0] + "@" if "@" in rest.split("/", 1)[0] else ""
    tail = rest.split("/", 1)[1] if "/" in rest else ""
    path, _, query = tail.partition("?")
    keep = [p for p in query.split("&") if p and not p.lower().startswith(("replicaset=", "readpreference="))]
    keys = {p.split("=", 1)[0].lower() for p in keep}
    if scheme == "mongodb+srv":
        if not keys & {"tls", "ssl"}:
            keep.append("tls=true")
        if auth_source and "authsource" not in keys:
            keep.append(f"authSource={auth_source}")
    keep.append("directConnection=true")
    return f"mongodb://{creds}{member}/{path}?{'&'.join(keep)}"
