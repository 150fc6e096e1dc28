"""Restore a committed backup: verify it first, then stream each artifact into its target.

Nothing is written until every artifact of the backup re-hashes to its manifest and passes its format
check, so a tampered or rotted archive never lands half-applied on a server. SQL goes through the
`mariadb`/`mysql` client on stdin (decompressed on the fly, the password in a 0600 option file), tar
archives are pre-scanned for unsafe members before a single file is extracted, RDB files are written for a
server to load at start-up, MongoDB archives go through the native restorer.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from backupd.compression import detect, iter_chunks, open_decompressed
from backupd.config import Config, MySQLPart, read_secret
from backupd.errors import BackupdError, StepError, UsageError
from backupd.procs import F_SETPIPE_SZ, PIPE_SIZE, drain_lines
from backupd.store import Store, StoredBackup, reading
from backupd.verify import integrity_problems, verify_backup

Progress = Callable[[int], None]
DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
PASSWORD_ENV = "BACKUPD_RESTORE_PASSWORD_FILE"  # noqa: S105 (names a file, holds no secret)


def _no_progress(n: int) -> None:
    """Default progress callback: nothing to show off a TTY."""


@dataclass
class Restored:
    """One artifact restored: where to, and how much (for the summary line)."""

    artifact: str
    target: str
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------ choosing and trusting a backup


def pick_backup(store: Store, job: str, backup_id: str | None) -> StoredBackup:
    """The named backup, else the newest one the run marked verified."""
    if backup_id:
        found = store.find(backup_id, job)
        if found is None:
            raise UsageError(f"restore: job {job} has no committed backup {backup_id!r}")
        return found
    good = [b for b in store.backups(job) if b.verified]
    if not good:
        raise BackupdError(f"restore: job {job} has no verified backup")
    return good[-1]


def ensure_intact(backup: StoredBackup, step: str = "verify", *, thorough: bool = True) -> None:
    """Refuse (before writing anything) a backup whose artifacts are missing, resized or re-hashed.

    `thorough` also re-runs each format check (a full decompress + parse). A restore skips that: a
    matching sha256 proves the bytes are the ones structurally verified at commit, and the second full
    pass would nearly double a large restore. Drills run it, since they exist to be thorough.
    """
    if thorough:
        problems = [(a["artifact"], a["problems"][0]) for a in verify_backup(backup) if not a["ok"]]
    else:
        problems = [(a["file"], p) for a in backup.manifest.get("artifacts", []) if (p := checksum_problem(backup, a))]
    if not backup.manifest.get("artifacts"):
        problems.append(("manifest", "lists no artifacts"))
    if problems:
        name, why = problems[0]
        raise StepError(step, f"backup {backup.backup_id}: {name}: {why}; refusing to restore", job=backup.job)


def checksum_problem(backup: StoredBackup, art: dict[str, Any]) -> str | None:
    problems = integrity_problems(backup.path / art["file"], art)
    return problems[0] if problems else None


def artifacts(backup: StoredBackup, fmt: str) -> list[dict[str, Any]]:
    return [a for a in backup.manifest.get("artifacts", []) if a.get("format") == fmt]


# ------------------------------------------------------------------ MySQL / MariaDB


@dataclass(frozen=True)
class MySQLTarget:
    """`mysql://user@host:port/db`: the password never travels in the URI."""

    user: str
    host: str
    port: int
    database: str | None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def part(self) -> MySQLPart:
        return MySQLPart(host=self.host, port=self.port, user=self.user)


def parse_mysql_uri(uri: str) -> MySQLTarget:
    parts = urlsplit(uri)
    if parts.scheme not in ("mysql", "mariadb"):
        raise UsageError(f"restore: --to {uri!r}: expected mysql://user@host:port/database")
    if parts.password is not None:
        raise UsageError("restore: --to must not contain a password: use --password-file")
    try:
        port = parts.port or 3306
    except ValueError:
        raise UsageError(f"restore: --to {uri!r}: bad port") from None
    db = unquote(parts.path.lstrip("/")) or None
    if db is not None and not DB_NAME_RE.match(db):
        raise UsageError(f"restore: database name {db!r}: use letters, digits, '_', '$', '-'")
    return MySQLTarget(unquote(parts.username or "root"), parts.hostname or "127.0.0.1", port, db)


def find_client() -> str:
    for name in ("mariadb", "mysql"):
        path = shutil.which(name)
        if path:
            return path
    raise StepError("restore", "neither mariadb nor mysql client found on PATH")


@contextlib.contextmanager
def option_file(target: MySQLTarget, password: str | None) -> Iterator[Path]:
    """A 0600 option file for the target, removed afterwards."""
    from backupd.sources.mysql import private_option_file

    with private_option_file(target.part(), password) as path:
        yield path


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_sql(client: str, optfile: Path, sql: str, host: str, database: str | None = None) -> list[list[str]]:
    """A short statement through the client (batch mode); SQL on stdin, rows as lists of text."""
    argv = [client, f"--defaults-extra-file={optfile}", "-N", "-B"]
    if database:
        argv.append(f"--database={database}")
    done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        msg = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise StepError("restore", msg, host=host)
    return [line.split("\t") for line in done.stdout.splitlines()]


def database_objects(client: str, optfile: Path, database: str, host: str) -> int | None:
    """How many tables, views, routines and events the database holds; None when it does not exist."""
    q = quote_str(database)
    rows = run_sql(
        client,
        optfile,
        f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME={q};"  # noqa: S608 (quoted)
        f"SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA={q})"
        f" + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={q})"
        f" + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA={q});",
        host,
    )
    if int(rows[0][0]) == 0:
        return None
    return int(rows[1][0])


def prepare_database(client: str, optfile: Path, database: str, host: str, yes: bool) -> None:
    """Create the database if missing; refuse a non-empty one unless the operator said --yes."""
    n = database_objects(client, optfile, database, host)
    if n is None:
        run_sql(client, optfile, f"CREATE DATABASE {quote_ident(database)};", host)
    elif n and not yes:
        raise BackupdError(
            f"restore: target database {database} on {host} is not empty ({n} objects); use --yes to restore over it"
        )


def _decompressor(dump: Path) -> list[str] | None:
    """`zstd -dc` / `gzip -dc` when installed: decompressing in its own process, straight into the client's
    pipe, keeps the (uncompressed, several times larger) SQL out of Python."""
    with dump.open("rb") as fh:
        algo = detect(fh.read(4))
    argv = {"zstd": ["zstd", "-dcq"], "gzip": ["gzip", "-dc"]}.get(algo)
    return argv if argv is not None and shutil.which(argv[0]) else None


def _feed(dest: IO[bytes], chunks: Iterator[bytes], progress: Progress, scale: float) -> bool:
    """Write every chunk into `dest`; False if the reader went away (its stderr says why)."""
    try:
        for chunk in chunks:
            dest.write(chunk)
            progress(int(len(chunk) * scale))
    except BrokenPipeError:
        return False
    finally:
        with contextlib.suppress(BrokenPipeError):
            dest.close()
    return True


def pipe_sql(
    client: str,
    optfile: Path,
    database: str,
    dump: Path,
    host: str,
    progress: Progress = _no_progress,
    expansion: float = 1.0,
) -> None:
    """Stream the decompressed dump into the client's stdin; the client's stderr names a failure.

    `expansion` (raw/stored bytes) scales progress when the compressed file is what we feed."""
    argv = [client, f"--defaults-extra-file={optfile}", f"--database={database}"]
    dec_argv = _decompressor(dump)
    procs: list[subprocess.Popen[bytes]] = []
    drainers: list[threading.Thread] = []
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        if dec_argv is not None:
            dec = subprocess.Popen(dec_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(dec)
            proc = subprocess.Popen(argv, stdin=dec.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert dec.stdout is not None
            dec.stdout.close()  # the client holds the read end now
        else:
            dec = None
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        feed_to = dec if dec is not None else proc
        assert feed_to.stdin is not None and proc.stderr is not None
        with contextlib.suppress(OSError):  # fewer wake-ups for the client; not fatal if refused
            fcntl.fcntl(feed_to.stdin.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        drainers += [threading.Thread(target=drain_lines, args=(p.stderr, tail), daemon=True) for p in procs]
        for t in drainers:
            t.start()
        if dec is not None:
            with dump.open("rb") as fh:
                ok = _feed(feed_to.stdin, iter_chunks(fh), progress, expansion)
        else:
            _, stream = open_decompressed(dump)
            with stream:
                ok = _feed(feed_to.stdin, iter_chunks(stream), progress, 1.0)
        rcs = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        raise
    finally:
        for t in drainers:
            t.join(timeout=5)
        for p in procs:
            if p.stderr is not None:
                p.stderr.close()
    if any(rcs) or not ok:
        why = tail[-1] if tail else f"client exited {rcs[-1]}"
        raise StepError("restore", f"database {database}: {why}", host=host)


def restore_sql_artifacts(
    backup: StoredBackup,
    target: MySQLTarget,
    password: str | None,
    *,
    only: str | None,
    yes: bool,
    progress: Progress = _no_progress,
) -> list[Restored]:
    """Restore one artifact into the URI's database, or each under its own name when the URI has none."""
    arts = artifacts(backup, "sql-dump")
    if only is not None:
        arts = [a for a in arts if a.get("database", a["name"]) == only]
        if not arts:
            have = ", ".join(a.get("database", a["name"]) for a in artifacts(backup, "sql-dump"))
            raise UsageError(f"restore: backup {backup.backup_id} has no database {only!r} (it has: {have})")
    if not arts:
        raise UsageError(f"restore: backup {backup.backup_id} holds no SQL dump")
    if target.database and len(arts) > 1:
        have = ", ".join(a.get("database", a["name"]) for a in arts)
        raise UsageError(f"restore: backup holds several databases ({have}): pick one with --database")
    plan = [(a, target.database or a.get("database", a["name"])) for a in arts]
    for _, name in plan:
        if not DB_NAME_RE.match(name):
            raise UsageError(f"restore: database name {name!r}: use letters, digits, '_', '$', '-'")
    client = find_client()
    out = []
    with option_file(target, password) as optfile:
        for _, name in plan:  # check every target before writing into any
            prepare_database(client, optfile, name, target.label, yes)
        for art, name in plan:
            began = time.monotonic()
            expansion = int(art.get("raw_bytes", 0)) / max(1, int(art.get("bytes", 0)))
            pipe_sql(client, optfile, name, backup.path / art["file"], target.label, progress, expansion)
            stats = art.get("stats", {})
            objects = {"tables": len(stats.get("tables", {})), "rows": int(stats.get("rows", 0))}
            out.append(Restored(art["file"], f"{target.label}/{name}", objects, time.monotonic() - began))
    return out


# ------------------------------------------------------------------ files (tar)


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why a member could write outside the target (absolute, '..', outward link, device), or None."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith("/"):
        return "absolute path"
    if ".." in name.parts:
        return "path with '..'"
    if member.isdev() or member.isfifo():
        return "device or fifo"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute():
            return f"link to absolute path {member.linkname}"
        base = name.parent if member.issym() else PurePosixPath(".")
        depth = 0
        for part in (*base.parts, *link.parts):
            if part == "..":
                depth -= 1
            elif part not in (".", ""):
                depth += 1
            if depth < 0:
                return f"link pointing outside ({member.linkname})"
    return None


def scan_tar(path: Path) -> list[str]:
    """One streaming pass over the listing: every unsafe member, so nothing is written if any is found."""
    problems = []
    _, stream = open_decompressed(path)
    with stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            why = unsafe_member(member)
            if why:
                problems.append(f"{member.name}: {why}")
    return problems


def directory_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def extract_tar(path: Path, dest: Path, *, yes: bool, progress: Progress = _no_progress) -> dict[str, int]:
    """Extract into `dest` (its root is the source's root); unsafe listings are refused up front."""
    if dest.exists() and not dest.is_dir():
        raise BackupdError(f"restore: target {dest} exists and is not a directory")
    if not directory_is_empty(dest) and not yes:
        raise BackupdError(f"restore: target directory {dest} is not empty; use --yes to restore over it")
    problems = scan_tar(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StepError("restore", f"{path.name}: unsafe member {problems[0]}{more}; nothing extracted")
    dest.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    _, stream = open_decompressed(path)
    with stream, tarfile.open(fileobj=stream, mode="r|") as tf:

        def members() -> Iterator[tarfile.TarInfo]:
            for m in tf:
                if m.isfile():
                    counts["files"] += 1
                    counts["bytes"] += m.size
                    progress(m.size)
                elif m.isdir():
                    counts["dirs"] += 1
                elif m.issym():
                    counts["symlinks"] += 1
                yield m

        try:
            tf.extractall(dest, members=members(), filter="data")
        except tarfile.TarError as exc:
            raise StepError("restore", f"{path.name}: {exc}") from None
    return counts


def restore_tar_artifacts(
    backup: StoredBackup, dest: Path, *, yes: bool, progress: Progress = _no_progress
) -> list[Restored]:
    arts = artifacts(backup, "tar")
    if not arts:
        raise UsageError(f"restore: backup {backup.backup_id} holds no file archive")
    out = []
    for art in arts:
        began = time.monotonic()
        counts = extract_tar(backup.path / art["file"], dest, yes=yes, progress=progress)
        out.append(Restored(art["file"], str(dest), counts, time.monotonic() - began))
    return out


# ------------------------------------------------------------------ Redis


def write_rdb(path: Path, dest_dir: Path, *, yes: bool, progress: Progress = _no_progress) -> Path:
    """Decompress the RDB to `dest_dir/dump.rdb` (via a temp name + rename, so a server never sees half)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / "dump.rdb"
    if final.exists() and not yes:
        raise BackupdError(f"restore: {final} exists; use --yes to replace it")
    tmp = dest_dir / ".dump.rdb.restoring"
    try:
        _, stream = open_decompressed(path)
        with stream, tmp.open("wb") as fh:
            for chunk in iter_chunks(stream):
                fh.write(chunk)
                progress(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def redis_live_steps(uri: str, rdb: str) -> str:
    """A live Redis cannot load an RDB without a restart: say exactly what to do instead."""
    return (
        f"restore: a running Redis ({uri}) cannot load an RDB while it runs. Steps:\n"
        f"  1. backupd restore JOB --to /some/dir   (writes dump.rdb from {rdb})\n"
        "  2. on the Redis host: redis-cli CONFIG GET dir; CONFIG GET dbfilename; CONFIG GET appendonly\n"
        "  3. stop redis-server (systemctl stop redis-server), so it does not save over the file\n"
        "  4. copy dump.rdb to <dir>/<dbfilename> (owner redis:redis, mode 0600)\n"
        "  5. if appendonly is yes: move the appendonly dir aside, start with appendonly no, then run\n"
        "     redis-cli CONFIG SET appendonly yes once loaded (else Redis loads the AOF, not the RDB)\n"
        "  6. start redis-server; check INFO persistence (loading:0) and DBSIZE against backupd show\n"
        "  7. replicas resync from the restored master on their own"
    )


# ------------------------------------------------------------------ MongoDB


@dataclass(frozen=True)
class MongoOptions:
    """mongorestore's --nsFrom/--nsTo pairs, --oplogReplay, and which tool does the work."""

    ns_from: tuple[str, ...] = ()
    ns_to: tuple[str, ...] = ()
    oplog_replay: bool = False
    tool: str = "native"  # or "mongorestore"


def mongo_restore(
    path: Path, uri: str, *, drop: bool, password: str | None, options: MongoOptions = MongoOptions()
) -> dict[str, int]:
    """Native restore (no mongorestore needed) unless asked for mongorestore; non-empty collections are
    refused unless `drop`."""
    from backupd.mongo_native import restore_archive

    _, stream = open_decompressed(path)
    with stream:
        return restore_archive(
            stream,
            uri,
            drop=drop,
            password=password,
            ns_from=list(options.ns_from),
            ns_to=list(options.ns_to),
            oplog_replay=options.oplog_replay,
            tool=options.tool,
        )


# ------------------------------------------------------------------ dispatch by job type


@dataclass
class RestoreRequest:
    job: str
    backup_id: str | None
    to: str | None
    files_to: str | None
    password_file: str | None
    database: str | None
    yes: bool
    mongo: MongoOptions = field(default_factory=MongoOptions)


def _password(req: RestoreRequest) -> str | None:
    path = req.password_file or os.environ.get(PASSWORD_ENV)
    if not path:
        return None
    try:
        return read_secret(Path(path))
    except OSError as exc:
        raise UsageError(f"restore: password file {path}: {exc.strerror or exc}") from None


def restore(
    config: Config, req: RestoreRequest, progress: Progress = _no_progress
) -> tuple[StoredBackup, list[Restored]]:
    """Verify, then restore by job type. Returns the backup and what was restored where."""
    job = config.job(req.job)
    kind = job.type
    if kind in ("mysql", "mongodb", "wordpress") and not req.to:
        raise UsageError(f"restore: a {kind} job needs --to URI")
    if kind == "files" and not (req.to or req.files_to):
        raise UsageError("restore: a files job needs --to DIR")
    if kind == "redis" and not req.to:
        raise UsageError("restore: a redis job needs --to DIR (or redis://host:port for the steps)")
    if kind == "wordpress" and not req.files_to:
        raise UsageError("restore: a wordpress job needs --files-to DIR as well as --to URI")
    if kind != "mongodb" and req.mongo != MongoOptions():
        raise UsageError("restore: --ns-from/--ns-to, --oplog-replay and --mongorestore are for mongodb jobs")
    if len(req.mongo.ns_from) != len(req.mongo.ns_to):
        raise UsageError("restore: give --ns-from and --ns-to in pairs (the same number of each)")
    mysql_target = parse_mysql_uri(req.to) if kind in ("mysql", "wordpress") and req.to else None
    backup = pick_backup(Store(config.store_root), req.job, req.backup_id)

    if kind == "redis" and req.to and req.to.startswith(("redis://", "rediss://")):
        rdb = artifacts(backup, "redis-rdb")
        raise BackupdError(redis_live_steps(req.to, str(backup.path / rdb[0]["file"]) if rdb else "?"))

    with reading(backup):
        ensure_intact(backup, thorough=False)
        return backup, _restore_from(backup, kind, req, mysql_target, progress)


def _restore_from(
    backup: StoredBackup, kind: str, req: RestoreRequest, mysql_target: MySQLTarget | None, progress: Progress
) -> list[Restored]:
    done: list[Restored] = []
    if mysql_target is not None:
        if kind == "wordpress" and req.files_to:  # check the directory before writing the database
            d = Path(req.files_to)
            if not directory_is_empty(d) and not req.yes:
                raise BackupdError(f"restore: target directory {d} is not empty; use --yes to restore over it")
        done += restore_sql_artifacts(
            backup, mysql_target, _password(req), only=req.database, yes=req.yes, progress=progress
        )
    if kind in ("files", "wordpress"):
        dest = Path(req.files_to or req.to or "")
        done += restore_tar_artifacts(backup, dest, yes=req.yes, progress=progress)
    if kind == "redis":
        began = time.monotonic()
        art = artifacts(backup, "redis-rdb")[0]
        final = write_rdb(backup.path / art["file"], Path(req.to or ""), yes=req.yes, progress=progress)
        keys = sum(int(v) for v in art.get("stats", {}).get("keys_hint", {}).values())
        done.append(Restored(art["file"], str(final), {"keys": keys}, time.monotonic() - began))
    if kind == "mongodb":
        for art in artifacts(backup, "mongo-archive"):
            began = time.monotonic()
            counts = mongo_restore(
                backup.path / art["file"], req.to or "", drop=req.yes, password=_password(req), options=req.mongo
            )
            done.append(Restored(art["file"], req.to or "", counts, time.monotonic() - began))
    return done
