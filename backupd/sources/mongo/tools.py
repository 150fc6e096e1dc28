"""MongoDB dumps: one `mongo.archive` artifact per backup, made by mongodump or by the native pymongo engine.

`engine = "auto"` uses mongodump when it is on PATH, else the native engine; both write the mongodump
archive format, verified by MongoArchiveChecker as it streams. The password only ever travels in a
0600 YAML file given to mongodump with `--config=` (or as a pymongo keyword): never in argv or the URI.
On a replica set the dump carries the oplog covering it (`oplog` defaults to on there), so a restore
with oplog replay is consistent at the dump's end.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backupd.engine.compression import open_decompressed
from backupd.engine.pipeline import ArtifactResult, ArtifactWriter
from backupd.engine.procs import feed_command, last_line, stream_command
from backupd.errors import StepError
from backupd.formats.mongo_archive import BinaryReader, MongoArchiveChecker
from backupd.fsutil import write_private_file
from backupd.settings import read_secret
from backupd.sources.base import DumpContext
from backupd.sources.mongo.config import MongoJob
from backupd.sources.mongo.native import (
    NsFilter,
    OplogError,
    OplogSource,
    ServerInfo,
    connect,
    dump_native,
    host_label,
    mongo_step,
    pin_member,
    server_info,
    strip_credentials,
)

ARTIFACT = "mongo"
DONE_DUMPING = re.compile(r"done dumping (\S+) \((\d+) documents?\)")
FINISHED_RESTORING = re.compile(r"finished restoring (\S+) \((\d+) documents?, (\d+) failures?\)")
ERROR_LINE = re.compile(r"Failed:|error", re.IGNORECASE)


# -- pure helpers (unit-testable) -------------------------------------------------------------------


def select_engine(job: MongoJob) -> tuple[str, str | None]:
    """("mongodump", path) or ("native", None): auto prefers the real tool when it is installed."""
    tool = shutil.which("mongodump")
    if job.engine == "mongodump" and tool is None:
        raise StepError("check", "engine = 'mongodump' but no mongodump on PATH (or use engine = 'native')")
    if job.engine == "native" or tool is None:
        return "native", None
    return "mongodump", tool


def tool_config_yaml(password: str) -> str:
    """The `--config` file: a JSON string is a valid YAML double-quoted scalar, whatever the password."""
    return "password: " + json.dumps(password, ensure_ascii=False) + "\n"


def mongodump_argv(
    tool: str,
    uri: str,
    *,
    read_preference: str,
    oplog: bool,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    config_file: str | None = None,
) -> list[str]:
    """`--archive` alone means stdout; no `--gzip`: our pipeline compresses with zstd."""
    argv = [tool]
    if config_file is not None:
        argv.append(f"--config={config_file}")
    argv += ["--archive", f"--uri={uri}", f"--readPreference={read_preference}"]
    if oplog:
        argv.append("--oplog")
    argv += [f"--nsInclude={p}" for p in include]
    argv += [f"--nsExclude={p}" for p in exclude]
    return argv


def mongorestore_argv(
    tool: str,
    uri: str,
    *,
    drop: bool,
    ns_pairs: Sequence[tuple[str, str]],
    oplog_replay: bool,
    config_file: str | None,
) -> list[str]:
    argv = [tool]
    if config_file is not None:
        argv.append(f"--config={config_file}")
    argv += ["--archive", f"--uri={uri}"]
    if drop:
        argv.append("--drop")
    for src, dst in ns_pairs:
        argv += [f"--nsFrom={src}", f"--nsTo={dst}"]
    if oplog_replay:
        argv.append("--oplogReplay")
    return argv


def parse_counts(lines: Sequence[str], pattern: re.Pattern[str] = DONE_DUMPING) -> dict[str, int]:
    """Per-namespace counts from mongodump's "done dumping db.coll (N documents)" lines."""
    counts: dict[str, int] = {}
    for line in lines:
        m = pattern.search(line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def cross_check(reported: dict[str, int], stats: dict[str, Any]) -> str | None:
    """Compare what the dumper says it wrote with what the checker counted in the archive."""
    namespaces: dict[str, dict[str, Any]] = stats.get("namespaces", {})
    for ns, n in sorted(reported.items()):
        got = namespaces.get(ns, {}).get("documents")
        if got is None:
            return f"the dump reported {n} documents for {ns}, which is not in the archive"
        if got != n:
            return f"the dump reported {n} documents for {ns} but the archive holds {got}"
    return None


def decide_oplog(job: MongoJob, info: ServerInfo, host: str) -> bool:
    if job.oplog is None:
        return info.replica_set
    if job.oplog and not info.replica_set:
        raise StepError("dump", "oplog = true needs a replica set member, but the server is standalone", host=host)
    return job.oplog


# -- processes (engine/procs.py runs them) ----------------------------------------------------------

FAILURE_TAIL = 20  # the stderr lines a failure message is picked from


def _count_lines() -> tuple[list[str], Callable[[str], None]]:
    """A list and the stderr callback filling it with the tool's count lines, kept whole (the rest of stderr
    only reaches the bounded tail, so memory stays constant)."""
    lines: list[str] = []

    def keep(line: str) -> None:
        if DONE_DUMPING.search(line) or FINISHED_RESTORING.search(line):
            lines.append(line)

    return lines, keep


def _failure(tail: Sequence[str]) -> str:
    tail = list(tail)[-FAILURE_TAIL:]
    bad = [x for x in tail if ERROR_LINE.search(x)] or tail
    return last_line(bad).split("\t")[-1]


# -- the job ----------------------------------------------------------------------------------------


def reach_mongo(job: MongoJob) -> str:
    host = host_label(job.uri)
    client = connect(job.uri, read_secret(job.password_file), job.read_preference)
    try:
        with mongo_step("connect", host):
            client.admin.command("ping")
            info = server_info(client)
    finally:
        client.close()
    role = "secondary" if info.secondary else "primary"
    where = f"replica set {info.set_name}, {role}" if info.replica_set else "standalone"
    return f"MongoDB {info.version} at {host} ({where})"


def dump_archive(job: MongoJob, ctx: DumpContext) -> dict[str, Any]:
    password = read_secret(job.password_file)
    host = host_label(job.uri)
    engine, tool = select_engine(job)
    # mongodump logs in by itself; our probe (hello, buildInfo) needs no login, so it gets no password
    client = connect(job.uri, password, job.read_preference) if tool is None else connect(strip_credentials(job.uri))
    try:
        with mongo_step("connect", host):
            info = server_info(client)
            if engine == "native":
                client = pin_member(client, info, job.uri, password)
        use_oplog = decide_oplog(job, info, host)
        ctx.events.event("step", step="dump", engine=engine, host=host, oplog=use_oplog)
        facts: dict[str, Any] = {
            "engine": engine,
            "host": host,
            "server_version": info.version,
            "replica_set": info.set_name,
            "read_preference": job.read_preference,
        }
        with ctx.writing(ARTIFACT, "mongo-archive", ".archive", MongoArchiveChecker(), host=host) as writer:
            if tool is not None:
                reported = _dump_mongodump(job, ctx, tool, password, use_oplog, writer, host)
            else:
                reported, oplog = _dump_native(job, ctx, client, info, use_oplog, writer, host)
                if oplog is not None:
                    facts["oplog_window"] = oplog
    finally:
        client.close()
    return {**facts, **_cross_check(ctx.last, reported, host)}


def _dump_mongodump(
    job: MongoJob,
    ctx: DumpContext,
    tool: str,
    password: str | None,
    use_oplog: bool,
    writer: ArtifactWriter,
    host: str,
) -> dict[str, int]:
    config = None
    if password is not None:
        config = ctx.tmp_dir / "mongodump.yaml"
        write_private_file(config, tool_config_yaml(password).encode())
    argv = mongodump_argv(
        tool,
        job.uri,
        read_preference=job.read_preference,
        oplog=use_oplog,
        include=job.include,
        exclude=job.exclude,
        config_file=str(config) if config else None,
    )
    lines, keep = _count_lines()
    try:
        done = stream_command(argv, writer, on_stderr=keep)
    finally:
        if config is not None:
            config.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StepError("dump", f"mongodump exited {done.returncode}: {_failure(done.stderr)}", host=host)
    return parse_counts(lines)


def _dump_native(
    job: MongoJob,
    ctx: DumpContext,
    client: Any,
    info: ServerInfo,
    use_oplog: bool,
    writer: ArtifactWriter,
    host: str,
) -> tuple[dict[str, int], dict[str, Any] | None]:
    source = OplogSource(client.local["oplog.rs"], client.config["transactions"]) if use_oplog else None
    try:
        with mongo_step("dump", host):
            stats = dump_native(
                client,
                writer,
                flt=NsFilter(tuple(job.include), tuple(job.exclude)),
                oplog=source,
                server_version=info.version,
                on_namespace=lambda ns: ctx.events.event("step", step="dump", namespace=ns),
            )
    except OplogError as exc:
        raise StepError("dump", str(exc), host=host) from None
    return stats.counts, stats.oplog


def _cross_check(result: ArtifactResult, reported: dict[str, int], host: str) -> dict[str, Any]:
    """The dumper's own per-namespace counts must match what the archive check counted."""
    check = result.check
    assert check is not None
    mismatch = cross_check(reported, check.stats)
    if mismatch:
        raise StepError("verify", f"{result.file}: {mismatch}", host=host)
    facts: dict[str, Any] = {"tool_version": check.facts.get("tool_version"), "documents": check.stats["documents"]}
    if "oplog" in check.facts:
        facts["oplog"] = check.facts["oplog"]
    return facts


# -- mongorestore (restore --mongorestore) -----------------------------------------------------------


def run_mongorestore(
    source: BinaryReader | Path | str,
    target_uri: str,
    *,
    password: str | None,
    drop: bool,
    ns_pairs: Sequence[tuple[str, str]],
    oplog_replay: bool,
) -> dict[str, int]:
    """Feed the (decompressed) archive to `mongorestore --archive` on stdin; counts from its log."""
    host = host_label(target_uri)
    tool = shutil.which("mongorestore")
    if tool is None:
        raise StepError("restore", "mongorestore is not on PATH (use the native restore)", host=host)
    with contextlib.ExitStack() as stack:
        stream: BinaryReader = (
            stack.enter_context(open_decompressed(Path(source))[1]) if isinstance(source, str | Path) else source
        )
        config = None
        if password is not None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backupd-restore-")))
            config = tmp / "mongorestore.yaml"
            write_private_file(config, tool_config_yaml(password).encode())
        argv = mongorestore_argv(
            tool,
            target_uri,
            drop=drop,
            ns_pairs=ns_pairs,
            oplog_replay=oplog_replay,
            config_file=str(config) if config else None,
        )
        lines, keep = _count_lines()
        done = feed_command(argv, iter(lambda: stream.read(1 << 20), b""), on_stderr=keep)
    rc = done.returncodes[-1]
    if rc != 0:
        raise StepError("restore", f"mongorestore exited {rc}: {_failure(done.tool_tail)}", host=host)
    failed = restore_failures(lines)
    if failed:
        where = ", ".join(f"{ns} ({n})" for ns, n in sorted(failed.items()) if ns)
        total = sum(failed.values()) if "" not in failed else failed[""]
        detail = f": {where}" if where else ""
        raise StepError("restore", f"mongorestore: {total} document(s) failed to restore{detail}", host=host)
    return parse_counts(lines, FINISHED_RESTORING)


FAILED_SUMMARY = re.compile(r"(\d+) document\(s\) failed to restore")


def restore_failures(lines: Sequence[str]) -> dict[str, int]:
    """Documents mongorestore could not restore, per namespace ("" for its closing summary): it exits 0
    with failures unless --stopOnError, so its own count is what tells."""
    out: dict[str, int] = {}
    for line in lines:
        if (m := FINISHED_RESTORING.search(line)) and int(m.group(3)):
            out[m.group(1)] = int(m.group(3))
        elif (s := FAILED_SUMMARY.search(line)) and int(s.group(1)):
            out[""] = int(s.group(1))
    return out
