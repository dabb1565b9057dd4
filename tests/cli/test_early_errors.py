"""Quick to say no: every error that needs no model is reported before torch, transformers,
bitsandbytes, peft, accelerate or datasets is imported, and so are `report` of a finished run,
`--version` and `--help`. Each case runs in a fresh process, which reports what it imported
through `sys.modules`. A row of tens of megabytes is read in bounded time and memory."""

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_jsonl

HEAVY = ("torch", "transformers", "bitsandbytes", "peft", "accelerate", "datasets")
ROOT = Path(__file__).resolve().parents[2]
PROBE = f"""
import json, sys
from pecft_cli.cli.app import main
sys.argv = ["pecft", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print("PROBE " + json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def probe(*args: object) -> tuple[int, list[str], str]:
    """Run `pecft ARGS` in a fresh process: its exit code, the heavy libraries it imported, and
    its output."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    report = json.loads(done.stderr.rsplit("PROBE ", 1)[1])
    return report["code"], report["heavy"], done.stdout + done.stderr


def finished_run(folder: Path) -> list:
    run = shutil.copytree(ROOT / "bench/records/quickstart/seq-seed0", folder / "finished")
    return ["report", run]


def sets(*overrides: str) -> Callable[[Path], list]:
    return lambda f: ["validate", f / "recipe.yaml", *[a for o in overrides for a in ("--set", o)]]


def data(rows: list[dict], command: str = "validate") -> Callable[[Path], list]:
    def setup(folder: Path) -> list:
        write_jsonl(folder / "data/codes/train.jsonl", rows)
        return [command, folder / "recipe.yaml"]

    return setup


def fifo(folder: Path) -> list:
    os.mkfifo(folder / "pipe.jsonl")
    return ["train", folder / "recipe.yaml", "--set", f"tasks.0.train={folder / 'pipe.jsonl'}"]


def typo(folder: Path) -> list:
    (folder / "recipe.yaml").write_text("name: [unclosed\n")
    return ["validate", folder / "recipe.yaml"]


CASES: dict[str, tuple[Callable[[Path], list], int]] = {
    "--version": (lambda f: ["--version"], 0),
    "--help": (lambda f: ["--help"], 0),
    "validate --help": (lambda f: ["validate", "--help"], 0),
    "schema": (lambda f: ["schema"], 0),
    "report of a finished run": (finished_run, 0),
    "missing recipe": (lambda f: ["validate", f / "nope.yaml"], 2),
    "yaml typo": (typo, 2),
    "bad --set": (sets("training.epoch=2"), 2),
    "schema error": (sets("training.lr=-1"), 2),
    "template error": (sets("tasks.0.prompt={country:>9}"), 2),
    "missing data file": (sets("tasks.0.train=nowhere.jsonl"), 2),
    "unknown data extension": (sets("tasks.0.train=recipe.yaml"), 2),
    "device as data": (sets("tasks.0.train=/dev/zero"), 2),
    "duplicate task names": (sets("tasks.1.name=codes"), 2),
    "missing field": (data([{"code": "FRA"}]), 2),
    "list target": (data([{"country": "France", "code": ["FRA"]}]), 2),
    "train: list target": (data([{"country": "France", "code": ["FRA"]}], "train"), 2),
    "train: FIFO as data": (fifo, 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_early_paths_import_no_model_library(case: str, recipe_file: Path) -> None:
    setup, code = CASES[case]
    exit_code, heavy, output = probe(*setup(recipe_file.parent))
    assert exit_code == code, output[-2000:]
    assert heavy == [], output[-2000:]


def test_a_row_of_tens_of_megabytes_is_read_in_bounded_time_and_memory(recipe_file: Path) -> None:
    """The row is read, rendered, measured against max_length by its characters and skipped
    without being tokenized: validate ends in seconds, where tokenizing it took minutes."""
    rows = [{"country": "France", "code": "FRA"}, {"country": "Japan", "code": "JPN"}]
    path = recipe_file.parent / "data/codes/train.jsonl"
    with path.open("w") as handle:
        handle.write(json.dumps(rows[0]) + "\n")
        handle.write('{"country": "' + "Lorem ipsum " * 4_000_000 + '", "code": "X"}\n')  # 48 MB
        handle.write(json.dumps(rows[1]) + "\n")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pecft_cli", "validate", str(recipe_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    first_line = process.stderr.readline()
    first_output = time.perf_counter() - started
    out, rest = process.communicate(timeout=300)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
    assert process.returncode == 0, (first_line + rest)[-2000:]
    assert first_line.startswith("reading the data of 2 task(s)")
    assert "train 3 rows (1 longer than max_length, skipped)" in out
    assert first_output < 30 and seconds < 60, (first_output, seconds)
    assert peak < 2 * 2**30, peak
