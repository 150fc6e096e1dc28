"""The architecture as rules a change cannot break silently (docs/architecture.md).

- One source interface: no module outside `backupd/sources/` (and the formats they own) compares a job's
  type or does an isinstance on a source's job model.
- No import cycles between modules, and no module importing from a layer above its own.
- Modules stay under about 500 lines: a larger topic becomes a package of modules with one job each.
- Child processes are started by `backupd/engine/` (procs.py: start, pump, stderr tail, timeout, kill by our
  PID) or, for throwaway servers, by `backupd/scratch/` and `backupd/lab/`; nothing else calls subprocess.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backupd.sources import SOURCES, job_models, source_types

PKG = Path(__file__).resolve().parents[2] / "backupd"

# Lower number = lower layer. A module may import its own layer or any lower one, never a higher one.
LAYERS: dict[str, int] = {
    "errors": 0, "fsutil": 0, "settings": 0, "schedule": 0, "logs": 0, "humanize": 0, "__init__": 0,
    "formats": 1,
    "engine": 2,
    "store": 3, "scratch": 3,
    "sources": 4,
    "notify": 5,
    "config": 6,
    "actions": 7,
    "daemon": 8, "lab": 8,
    "cli": 9, "__main__": 10,
}

# A package's modules share its top-level folder's layer: `schedule/` (cron, zones, changes, calendar_dates,
# systemd) is core, `formats/mongo_archive/` is formats, `sources/mongo/native/` and `sources/redis/` are
# sources, `daemon/` (scheduler, plan, runs, web, ...) is daemon, `cli/` (parser, common, jobs, store, service,
# setup) is cli.

MAX_LINES = 520  # "about 500"
# Modules still over MAX_LINES, each with the reason it is not split yet. Do not add to this list: split instead.
OVERSIZE: dict[str, str] = {}

# Where processes may be started directly: the process helpers and the throwaway servers.
SPAWNING_LAYERS = ("backupd.engine", "backupd.scratch", "backupd.lab")
# Modules outside those that still start processes themselves, each with the reason. Do not add to this list:
# extend engine/procs.py instead.
SPAWN_ALLOWED: dict[str, str] = {
    "backupd.daemon.runs": "the daemon's own `backupd run/drill/verify` children: started in a session of "
    "their own and supervised for the whole run (polled, stopped by killpg of the session we started), not a "
    "tool whose output is pumped",
    "backupd.daemon.streams": "the daemon's own `backupd stream JOB` children, one per PITR job: supervised like "
    "the scheduler's (restarted with backoff, stopped by killpg of the session we started)",
}
SUBPROCESS_CALLS = frozenset({"Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"})
OS_CALLS = frozenset({"system", "popen", "posix_spawn", "posix_spawnp", "fork", "forkpty"})


def process_starts(tree: ast.Module) -> list[int]:
    """Lines that start a process: subprocess's functions, os.system/popen/spawn*/exec*/fork."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            if any(a.name in SUBPROCESS_CALLS for a in node.names):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            owner, name = (func.value.id if isinstance(func.value, ast.Name) else ""), func.attr
            if (owner == "subprocess" and name in SUBPROCESS_CALLS) or (
                owner == "os" and (name in OS_CALLS or name.startswith(("spawn", "exec")))
            ):
                lines.append(node.lineno)
    return lines


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(["backupd", *rel.parts])
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[top]


def imported(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every backupd module `module` imports (at any depth of the file: lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("backupd"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("backupd")]
        found |= {n for n in names if n in known and n != module}
    return found


def test_every_layer_is_named() -> None:
    tops = {m.split(".")[1] for m in modules() if "." in m}
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS in this test and docs/architecture.md"


def module_lines() -> dict[str, int]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        out[".".join(["backupd", *rel.parts]).removesuffix(".__init__")] = len(path.read_text().splitlines())
    return out


def test_modules_stay_small() -> None:
    sizes = module_lines()
    too_big = [f"{m}: {n} lines" for m, n in sizes.items() if n > MAX_LINES and m not in OVERSIZE]
    assert too_big == [], "split these into modules with one job each (docs/architecture.md)"
    stale = [m for m in OVERSIZE if sizes.get(m, 0) <= MAX_LINES]
    assert stale == [], "remove these from OVERSIZE: they are small now, or gone"


def test_processes_are_started_only_by_the_process_helpers() -> None:
    starts = {name: process_starts(tree) for name, tree in modules().items()}
    outside = {name: lines for name, lines in starts.items()
               if lines and not name.startswith(SPAWNING_LAYERS) and name not in SPAWN_ALLOWED}
    assert outside == {}, "start processes through backupd/engine/procs.py (stream_command, run_capture, feed_command)"
    stale = [name for name in SPAWN_ALLOWED if not starts.get(name)]
    assert stale == [], "remove these from SPAWN_ALLOWED: they no longer start processes themselves"


def test_the_process_check_catches_a_direct_start() -> None:
    """The rule must be able to fail: each way of starting a process is found."""
    for code in ("import subprocess\nsubprocess.run(['ls'])\n", "from subprocess import Popen\n",
                 "import subprocess\nsubprocess.Popen(['ls'])\n", "import os\nos.system('ls')\n",
                 "import os\nos.execvp('ls', ['ls'])\n"):
        assert process_starts(ast.parse(code)), code
    assert process_starts(ast.parse("import subprocess\nsubprocess.DEVNULL\n")) == []


def test_no_module_outside_sources_branches_on_a_job_type() -> None:
    types = set(source_types())
    model_names = {m.__name__ for m in job_models()}
    hits = []
    for name, tree in modules().items():
        if name.startswith(("backupd.sources", "backupd.formats")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                consts = [o.value for o in operands if isinstance(o, ast.Constant)]
                consts += [e.value for o in operands if isinstance(o, ast.Tuple | ast.List | ast.Set)
                           for e in o.elts if isinstance(e, ast.Constant)]
                if any(c in types for c in consts):
                    hits.append(f"{name}:{node.lineno} compares a job type")
            call = node.func if isinstance(node, ast.Call) else None
            named = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if isinstance(call, ast.Name) and call.id == "isinstance" and named & model_names:
                hits.append(f"{name}:{node.lineno} isinstance on a source's job model")
            source_import = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backupd.sources.")
            if source_import and any(a.name in model_names for a in node.names):  # type: ignore[attr-defined]
                hits.append(f"{name}:{node.lineno} imports a source's job model")
    assert hits == []


def test_the_check_above_catches_a_branch() -> None:
    """The rule must be able to fail: a type comparison in a module outside sources/ is found."""
    tree = ast.parse("def f(job):\n    return job.type == 'redis'\n")
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert any(isinstance(c, ast.Constant) and c.value in source_types() for n in compares for c in n.comparators)


def test_no_import_cycles_and_no_upward_imports() -> None:
    mods = modules()
    known = set(mods)
    graph = {m: imported(m, t, known) for m, t in mods.items()}
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m)]
    assert upward == []

    # cycles: a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    def edges(m: str) -> set[str]:
        return {d for d in graph[m] if not d.startswith(m + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d):], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.type)
def test_each_source_is_complete(source: object) -> None:
    """Every source declares its type and model, and the model's `type` accepts exactly that name."""
    from backupd.sources.base import Source

    assert isinstance(source, Source)
    assert source.model.model_fields["type"].annotation is not str
    assert source.type in str(source.model.model_fields["type"].annotation)


DRIVERS = ("pymongo", "bson", "paramiko", "fabric", "invoke", "boto3", "botocore", "redis", "moto")
_STARTUP = """
import json, sys
from backupd.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "loaded": sorted({m.split('.')[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["restore", "--help"], ["list"], ["status"]], ids=" ".join)
def test_cli_startup_loads_no_driver(tmp_path: Path, argv: list[str]) -> None:
    """Commands that talk to no database, host or bucket load none of the drivers (together ~0.5 s of startup)."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "site.toml").write_text(f'type = "files"\nsource = "{tmp_path}"\nschedule = "@daily"\n')
    config = tmp_path / "backupd.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path}/store"\n[state]\ndir = "{tmp_path}/state"\n')
    args = argv if "--help" in argv else ["--config", str(config), *argv]
    done = subprocess.run([sys.executable, "-c", _STARTUP, *args], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(PKG.parent), "PATH": "/usr/bin:/bin"}, check=False, timeout=60)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["rc"] in (0, None) or (argv == ["status"] and "overdue: site" in done.stderr), done.stderr
    assert sorted(set(out["loaded"]) & set(DRIVERS)) == []


_STREAM = """
import json, os, signal, sys, threading, time
from backupd.cli import main

def stop_soon() -> None:
    time.sleep(float(os.environ["STOP_AFTER"]))
    os.kill(os.getpid(), signal.SIGTERM)  # the stream's own stop: it returns from its reconnect wait

threading.Thread(target=stop_soon, daemon=True).start()
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "loaded": sorted({m.split('.')[0] for m in sys.modules})}))
"""
STREAM_UNNEEDED = ("rich", "prometheus_client", "pyrage", "smtplib")


def test_stream_of_a_direct_job_loads_no_ssh_s3_or_terminal_stack(tmp_path: Path) -> None:
    """`backupd stream JOB` runs for days: a job without via_ssh, S3 or encryption keeps paramiko/fabric,
    boto3, rich, age and the mail stack out of its memory (about 12 MB of its RSS, docs/performance.md)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: the stream tries, fails, waits to retry
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "pw").write_text("x")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "db.toml").write_text(
        f'type = "mysql"\nschedule = "@daily"\nhost = "127.0.0.1"\nport = {port}\nuser = "streamer"\n'
        f'password_file = "{tmp_path}/pw"\ndatabases = ["d"]\n[pitr]\nenabled = true\nserver_id = 4001\n'
    )
    config = tmp_path / "backupd.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path}/store"\n[state]\ndir = "{tmp_path}/state"\n')
    done = subprocess.run([sys.executable, "-c", _STREAM, "--config", str(config), "stream", "db"], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=60,
                          env={"PYTHONPATH": str(PKG.parent), "PATH": "/usr/bin:/bin", "STOP_AFTER": "2"})
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "pitr_link_lost" in done.stdout and "pymysql" in out["loaded"], done.stderr  # it tried to connect
    assert sorted(set(out["loaded"]) & {*DRIVERS, *STREAM_UNNEEDED} - {"pymysql"}) == []
