"""Wall time of each class of early error: how long `pecft validate` takes to say no.

    .venv/bin/python bench/bench_early_errors.py --repeats 5

Every error that needs no model (the recipe, its YAML and schema, `--set`, templates, data paths,
a data file's type, encoding and rows, values that are not text) is reported before any model
library is imported; the target is under a second each. Each class runs as its own `pecft
validate` process `--repeats` times after one warm-up, on the quickstart recipe with one thing
wrong, and the script prints the median, fastest and slowest wall time, checking that each exits
2 (0 for the reference rows: `--version`, `--help`, `report` of a finished run). The machine's
load average is printed before and after: a figure measured while other work ran is not one to
report.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/quickstart.yaml"
SCRIPT = Path(sys.executable).parent / "pecft"
Case = Callable[[Path], list[str]]


def sets(*overrides: str) -> Case:
    return lambda scratch: ["validate", str(RECIPE), *[a for o in overrides for a in ("--set", o)]]


def data(name: str, content: bytes) -> Case:
    """The first task's train data replaced by a scratch file holding `content`."""

    def case(scratch: Path) -> list[str]:
        path = scratch / name
        if not path.exists():
            path.write_bytes(content)
        return sets(f"tasks.0.train={path}")(scratch)

    return case


def recipe_text(text: str) -> Case:
    def case(scratch: Path) -> list[str]:
        (scratch / "typo.yaml").write_text(text)
        return ["validate", str(scratch / "typo.yaml")]

    return case


def fifo(scratch: Path) -> list[str]:
    if not (scratch / "pipe.jsonl").exists():
        os.mkfifo(scratch / "pipe.jsonl")
    return sets(f"tasks.0.train={scratch / 'pipe.jsonl'}")(scratch)


def link_loop(scratch: Path) -> list[str]:
    if not (scratch / "a.jsonl").is_symlink():
        (scratch / "a.jsonl").symlink_to(scratch / "b.jsonl")
        (scratch / "b.jsonl").symlink_to(scratch / "a.jsonl")
    return sets(f"tasks.0.train={scratch / 'a.jsonl'}")(scratch)


def finished_run(scratch: Path) -> list[str]:
    run = scratch / "finished"
    if not run.exists():
        shutil.copytree(ROOT / "bench/records/quickstart/seq-seed0", run)
    return ["report", str(run)]


GOOD = b'{"char": "A", "name": "LATIN CAPITAL LETTER A", "value": "1"}\n'
ERRORS: dict[str, Case] = {
    "missing recipe": lambda scratch: ["validate", str(scratch / "nope.yaml")],
    "malformed YAML": recipe_text("name: [unclosed\n"),
    "schema: negative lr": sets("training.lr=-1"),
    "--set: unknown key": sets("training.epoch=2"),
    "template: format spec": sets("tasks.0.prompt={char:>9}"),
    "duplicate task names": sets("tasks.1.name=numeric_value"),
    "missing data file": sets("tasks.0.train=nowhere.jsonl"),
    "unknown data extension": data("data.txt", b"A 1\n"),
    "device as data (/dev/zero)": sets("tasks.0.train=/dev/zero"),
    "FIFO as data": fifo,
    "loop of symbolic links": link_loop,
    "non-UTF-8 data": data("latin.jsonl", GOOD + b'{"char": "\xe9"}\n'),
    "broken JSON line": data("broken.jsonl", GOOD + b'{"char": \n'),
    "CSV column named twice": data("twice.csv", b"char,name,name\nA,a,b\n"),
    "row missing a field": data("missing.jsonl", GOOD + b'{"char": "B"}\n'),
    "list in a target": data("list.jsonl", GOOD + b'{"char": "B", "name": "B", "value": ["2"]}\n'),
    "row over 64 MiB": data("huge.jsonl", GOOD + b'{"char": "' + b"x" * (65 * 2**20) + b'"}\n'),
}
REFERENCE: dict[str, Case] = {
    "--version": lambda scratch: ["--version"],
    "--help": lambda scratch: ["--help"],
    "report of a finished run": finished_run,
}


def pecft() -> list[str]:
    """The `pecft` script beside this Python, else this Python running the package."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pecft_cli"]


def timed(command: list[str], expected: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != expected or (expected and "error:" not in done.stderr):
        raise SystemExit(
            f"{' '.join(command)[:200]}: exit {done.returncode}, expected {expected}\n"
            + (done.stdout + done.stderr)[-1500:]
        )
    return seconds


def measure(cases: dict[str, Case], expected: int, repeats: int, scratch: Path) -> None:
    for name, case in cases.items():
        command = [*pecft(), *case(scratch)]
        timed(command, expected)  # warm-up: file caches, byte-compiled modules
        times = [timed(command, expected) for _ in range(repeats)]
        median = statistics.median(times)
        mark = "" if expected or median < 1.0 else "  over 1 s"
        print(f"{name:<30} {median:>7.3f} {min(times):>7.3f} {max(times):>7.3f}{mark}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per class")
    repeats = parser.parse_args().repeats
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"command: {' '.join(pecft())} validate ...; {repeats} runs per class after a warm-up")
    print(f"{'early error (exit 2)':<30} {'median':>7} {'min':>7} {'max':>7}   seconds")
    with tempfile.TemporaryDirectory() as folder:
        measure(ERRORS, 2, repeats, Path(folder))
        print(f"{'reference (exit 0)':<30}")
        measure(REFERENCE, 0, repeats, Path(folder))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
