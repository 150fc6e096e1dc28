"""Restore a MySQL/MariaDB database to a point: its base dump, then the selected transactions replayed with
`mariadb-binlog - | mariadb` (binlog bytes on stdin, streamed), and the PITR drills (docs/pitr.md).

Everything that can refuse runs before anything is written: the plan (window, holes), every segment's
hash and events, DDL statements a renamed restore cannot rewrite, the target's BINLOG REPLAY privilege
(the `BINLOG '...'` statements of row events) and, when the target writes a binlog of its own, BINLOG
ADMIN: the replay runs with sql_log_bin=0 so the old transactions' GTIDs never enter the target's binlog
(on the job's own server they would break its GTID sequence and the stream reading it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from backupd.engine.procs import feed_chain, find_tool
from backupd.errors import BackupdError, StepError
from backupd.sources.base import (
    Check,
    DrillContext,
    DrillResult,
    Progress,
    Restored,
    RestoreRequest,
    artifacts,
    compare,
    no_progress,
)
from backupd.sources.mysql.client import (
    MySQLTarget,
    find_client,
    option_file,
    parse_mysql_uri,
    pipe_sql,
    quote_ident,
    restore_sql_artifacts,
    run_sql,
)
from backupd.sources.mysql.drill import mysql_scratch, sql_checks
from backupd.store.backups import StoredBackup
from backupd.store.pitr import (
    Base,
    Plan,
    Until,
    base_of,
    bases,
    covers,
    iso,
    pairs,
    parse_until,
    pick_database,
    plan_from,
    plan_restore,
    window,
)
from backupd.store.replay import Scan, replay_bytes, scan
from backupd.store.segments import Segment, SegmentStore, chains

_DDL_WORDS = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.I)
_REPLAY_GRANT = re.compile(r"^GRANT (.*) ON \*\.\* TO", re.I)


def qualified_ref(sql: str, database: str) -> bool:
    """The statement names an object as `database`.name (quoted or not)."""
    pattern = r"(?:`" + re.escape(database).replace("`", "``") + r"`|\b" + re.escape(database) + r")\s*\.\s*[`\w]"
    return re.search(pattern, sql, re.I) is not None


def check_statements(result: Scan, database: str, target_db: str) -> None:
    """A DDL statement `mariadb-binlog --rewrite-db` cannot rewrite (or its database filter would drop) is
    refused by name, with the way out."""
    for db, sql, gtid in result.statements:
        if not _DDL_WORDS.match(sql):
            continue
        renamed = target_db != database and qualified_ref(sql, database)
        dropped = db != database and qualified_ref(sql, database)
        if renamed or dropped:
            shown = " ".join(sql.split())[:120]
            why = (f"restoring {database} as {target_db}: it names `{database}` itself, which --rewrite-db does not"
                   " rewrite" if renamed else f"it runs outside `{database}` (default database {db or 'none'})")
            raise BackupdError(
                f"restore: the replayed range holds DDL statement {shown!r} (GTID {gtid}); {why}: restore under"
                f" the original name {database} on another server instead"
            )


def _privileges_and_log_bin(client: str, optfile: Path, host: str) -> tuple[set[str], bool]:
    """The target user's global privileges (from SHOW GRANTS, upper case) and whether the target writes a
    binlog: one client run, not two (each start of the client is a fixed cost of every restore)."""
    rows = run_sql(client, optfile, "SHOW GRANTS; SELECT @@log_bin;", host)
    out: set[str] = set()
    for row in rows[:-1]:
        m = _REPLAY_GRANT.match(row[0])
        if m:
            out |= {p.strip().upper() for p in m.group(1).split(",")}
    return out, rows[-1][0] == "1"


def check_target(client: str, optfile: Path, target: MySQLTarget) -> bool:
    """BINLOG REPLAY (or SUPER) for the BINLOG statements; whether the target logs (then BINLOG ADMIN)."""
    privs, logs = _privileges_and_log_bin(client, optfile, target.label)
    every = "ALL PRIVILEGES" in privs or "SUPER" in privs
    if not every and "BINLOG REPLAY" not in privs:
        raise BackupdError(
            f"restore: user {target.user} on {target.label} lacks the BINLOG REPLAY privilege the replay's BINLOG"
            f" statements need (GRANT BINLOG REPLAY ON *.* TO ...)"
        )
    if logs and not every and "BINLOG ADMIN" not in privs:
        raise BackupdError(
            f"restore: {target.label} writes a binlog: the replay must not log the old transactions' GTIDs into"
            f" it; grant {target.user} BINLOG ADMIN (the replay then runs with sql_log_bin=0) or restore to a"
            " server without log_bin"
        )
    return logs


def replay_argv(tool: str, database: str, target_db: str, disable_log_bin: bool) -> list[str]:
    argv = [tool, "--verify-binlog-checksum", f"--database={database}"]  # filters before the rewrite
    if target_db != database:
        argv.append(f"--rewrite-db={database}->{target_db}")
    if disable_log_bin:
        argv.append("--disable-log-bin")
    return [*argv, "-"]


def replay(result: Scan, database: str, target: MySQLTarget, target_db: str, password: str | None,
           disable_log_bin: bool) -> float:  # fmt: skip
    """Pipe the selected transactions through mariadb-binlog into the client; seconds taken."""
    began = time.monotonic()
    with option_file(target, password) as optfile:
        replay_file(result, database, target_db, optfile, target, disable_log_bin)
    return time.monotonic() - began


@dataclass
class PitrRestore:
    plan: Plan
    scan: Scan
    database: str
    target_db: str


def prepare_until(backups: list[StoredBackup], segments: SegmentStore, req: RestoreRequest) -> PitrRestore:
    """Every refusal that needs no server: the plan, the segments proven, the statements judged."""
    target = parse_mysql_uri(req.to or "")
    until = parse_until(str(req.option("until")))
    database = pick_database(backups, req.option("database"))
    plan = plan_restore(backups, segments.segments(), until, database)
    result = scan(plan, database)
    if until.gtid is not None and not result.reached:
        raise BackupdError(f"restore: --until {until}: that GTID is not in the committed segments")
    target_db = target.database or database
    check_statements(result, database, target_db)
    return PitrRestore(plan, result, database, target_db)


def restore_until_sql(pr: PitrRestore, req: RestoreRequest, progress: Progress = no_progress) -> list[Restored]:
    """The base dump of the one database, then the replay (after the target's privileges are checked)."""
    target = parse_mysql_uri(req.to or "")
    password = req.password()
    client = find_client()
    with option_file(MySQLTarget(target.user, target.host, target.port, None), password) as optfile:
        logs = check_target(client, optfile, target)
    base = pr.plan.base.backup
    target_for_base = MySQLTarget(target.user, target.host, target.port, pr.target_db)
    done = restore_sql_artifacts(base, target_for_base, password, only=pr.database, yes=req.yes, progress=progress)
    seconds = replay(pr.scan, pr.database, target, pr.target_db, password, logs) if pr.scan.pieces else 0.0
    last = iso(pr.scan.last_time) if pr.scan.last_time else "none (nothing to replay)"
    segs = len(pr.scan.pieces)
    objects = {"transactions": pr.scan.transactions, "events": pr.scan.events, "segments": segs}
    label = f"binlog from {pr.plan.base.pos} to {pr.scan.end or pr.plan.base.pos}, last event {last}"
    return [*done, Restored(label, f"{target.label}/{pr.target_db}", objects, seconds)]


# ------------------------------------------------------------------ drills


def _scratch_target(host: str) -> MySQLTarget:
    h, _, port = host.rpartition(":")
    return MySQLTarget("root", h, int(port), None)


def pitr_drill_sql(
    drill_target: str | None, password: str | None, backups: list[StoredBackup], segments: SegmentStore,
    ctx: DrillContext, rng: random.Random | None = None,
) -> DrillResult:  # fmt: skip
    """The chain drill (base N rolled forward to base N+1's position, compared with N+1's stats), then a
    restore to a random instant of the window that must replay without an error."""
    pair = chain_pair(backups, segments.segments())
    if pair is None:
        raise BackupdError("drill: --pitr needs two consecutive verified base backups joined by committed segments")
    older, newer = pair
    ctx.hold(older.backup)  # rolled forward: held against a prune and re-verified like the drilled one
    ctx.hold(newer.backup)  # its stats are the comparison
    ctx.notes.append(f"pitr chain: base {older.backup.backup_id} rolled forward to {newer.backup.backup_id}")
    scratch = mysql_scratch(drill_target, password, ctx.work, newer.backup.backup_id)
    client, optfile, host, prefix = ctx.stack.enter_context(scratch)
    checks: list[Check] = []
    seconds = 0.0
    for database in sorted(newer.positions):
        if database not in older.positions:
            continue
        db = f"{prefix}{database}"[:64]
        began = time.monotonic()
        until = Until(str(newer.positions[database]), pos=newer.positions[database])
        base = base_of(older.backup, database)
        assert base is not None
        _roll(client, optfile, host, db, database, plan_from(base, segments.segments(), until))
        seconds += time.monotonic() - began
        art = next(a for a in artifacts(newer.backup, "sql-dump") if a.get("database", a["name"]) == database)
        checks += sql_checks(client, optfile, db, host, art.get("stats", {}), f"pitr {database}")
        if prefix:
            _drop(client, optfile, host, db)
    w = window(backups, segments.segments())
    if w.start is not None and w.end is not None and w.base is not None:
        span = max(0, int((w.end - w.start).total_seconds()))
        instant = w.start + timedelta(seconds=(rng or random.SystemRandom()).randint(0, span))
        for database in sorted(w.base.positions):
            db = f"{prefix}{database}"[:64]  # the original name on a scratch server: DDL naming it replays
            try:
                plan = plan_restore(backups, segments.segments(), Until(iso(instant), time=instant), database)
                ctx.hold(plan.base.backup)
                n = _roll(client, optfile, host, db, database, plan)
                checks.append(compare(f"pitr {database} replay to {iso(instant)}", "ok", "ok"))
                ctx.notes.append(f"pitr {database}: restored to {iso(instant)} ({n} transactions replayed)")
            except BackupdError as exc:
                checks.append(compare(f"pitr {database} replay to {iso(instant)}", "ok", str(exc).splitlines()[0]))
            if prefix:
                _drop(client, optfile, host, db)
    return DrillResult(checks, seconds)


def chain_pair(backups: list[StoredBackup], segs: list[Segment]) -> tuple[Base, Base] | None:
    """The newest two consecutive bases one chain of segments rolls forward (positions and GTIDs)."""
    found = bases(backups)
    runs = list(chains([s for s in segs if not s.manifest.get("unreadable")]))
    for older, newer in reversed(list(itertools.pairwise(found))):
        newest_pos = max(newer.positions.values(), key=lambda p: p.key)
        if any(pairs(c, older) and pairs(c, newer) and covers(c, newest_pos) for c in runs):
            return older, newer
    if len(found) >= 2:  # consecutive bases exist but no chain joins them: the drill fails and says where
        return found[-2], found[-1]
    return None


def _roll(client: str, optfile: Path, host: str, db: str, database: str, plan: Plan) -> int:
    """Restore `database` of the plan's base as `db`, then replay the plan; transactions replayed."""
    result = scan(plan, database)
    check_statements(result, database, db)
    until = plan.until
    if until.pos is not None and (result.end or plan.base.positions[database]) != until.pos and not result.reached:
        raise BackupdError(f"drill: the committed segments end before {until} (a segment is missing)")
    run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)}; CREATE DATABASE {quote_ident(db)};", host)
    base = plan.base.backup
    art = next(a for a in artifacts(base, "sql-dump") if a.get("database", a["name"]) == database)
    pipe_sql(client, optfile, db, base.path / art["file"], host)
    if result.pieces:
        replay_file(result, database, db, optfile, _scratch_target(host))
    return result.transactions


def replay_file(result: Scan, database: str, target_db: str, optfile: Path, target: MySQLTarget,
                disable_log_bin: bool = False) -> None:  # fmt: skip
    """`mariadb-binlog - | mariadb`, the selected bytes on stdin (TZ=UTC for the times it prints)."""
    tool = find_tool(["mariadb-binlog", "mysqlbinlog"], "binlog tool", "replay")
    argvs = [replay_argv(tool, database, target_db, disable_log_bin),
             [find_client(), f"--defaults-extra-file={optfile}", "--binary-mode"]]
    done = feed_chain(argvs, replay_bytes(result), env={**os.environ, "TZ": "UTC"})
    if not done.ok:
        tails = [t for t in done.tails if t]
        why = tails[-1][-1] if tails else f"exit {done.returncodes}"
        raise StepError(
            "replay", f"database {target_db}: {why} (the base is restored and partly rolled forward: drop"
            f" {target_db} and restore again)", host=target.label,
        )


def _drop(client: str, optfile: Path, host: str, db: str) -> None:
    with contextlib.suppress(BackupdError, OSError):
        run_sql(client, optfile, f"DROP DATABASE IF EXISTS {quote_ident(db)};", host)
