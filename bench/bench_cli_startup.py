"""How long a CLI call takes before it does any work: `backupd --help`, `restore --help`, `list`, `status`.

Makes a store holding three backups of a small local `files` job, then runs each command N times (runs of the
trees given are interleaved, so a busy machine slows them alike) and prints the median wall and CPU time of
each. With two trees (an old checkout and this one) it compares them; each tree's `backupd` is imported from
that directory, the working directory is a temp dir so nothing else is picked up.

    python bench/bench_cli_startup.py [--runs 15] [TREE ...]     # default TREE: this checkout
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def backupd(tree: Path, args: list[str], cwd: Path) -> tuple[float, float]:
    """One call's wall time and CPU time (user + system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backupd", *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def make_store(root: Path, tree: Path) -> Path:
    (root / "src").mkdir()
    (root / "jobs").mkdir()
    for i in range(3):
        (root / "src" / f"f{i}.txt").write_text(f"file {i}\n")
    (root / "jobs" / "site.toml").write_text(f'type = "files"\nsource = "{root}/src"\nschedule = "@daily"\n')
    config = root / "backupd.toml"
    config.write_text(f'[storage]\nroot = "{root}/store"\n[state]\ndir = "{root}/state"\n[logging]\nlevel = "error"\n')
    for _ in range(3):
        subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "run", "site"], cwd=root,
                       env={**os.environ, "PYTHONPATH": str(tree)}, check=True, stdout=subprocess.DEVNULL)
        time.sleep(1.1)  # backup ids are per second
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("trees", nargs="*", type=Path, default=[HERE])
    opts = ap.parse_args()
    trees = [t.resolve() for t in opts.trees]
    with tempfile.TemporaryDirectory(prefix="backupd-startup-") as tmp:
        root = Path(tmp)
        config = make_store(root, trees[-1])
        commands = {"--help": ["--help"], "restore --help": ["restore", "--help"],
                    "list": ["--config", str(config), "list"], "status": ["--config", str(config), "status"]}
        for label, args in commands.items():
            runs: dict[Path, list[tuple[float, float]]] = {t: [] for t in trees}
            for _ in range(opts.runs):
                for tree in trees:
                    runs[tree].append(backupd(tree, args, root))
            cells = [f"{label:15s}"]
            for tree in trees:
                wall = statistics.median(r[0] for r in runs[tree])
                cpu = statistics.median(r[1] for r in runs[tree])
                cells.append(f"{tree.name}: wall {wall:.3f} s, cpu {cpu:.3f} s")
            print("  ".join(cells), f"(median of {opts.runs})")


if __name__ == "__main__":
    main()
