"""A run killed (SIGKILL) at random moments, again and again, leaves only whole files, and the
same command each time carries it on until it completes."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import write_recipe
from safetensors import safe_open

from pecft_cli.runfolder.atomic import read_json_file
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.checkpoint import load_checkpoint


def check_every_file(run_dir: Path) -> int:
    """Parse every file the run left; return how many were checked."""
    checked = 0
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue  # the lock, and temporaries a kill left (swept by the next run)
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.name == "matrix.csv":
            read_matrix(path)
        elif path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as weights:
                assert list(weights.keys())
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        checked += 1
    if (run_dir / "checkpoint").exists():
        assert load_checkpoint(RunFolder(run_dir)) is not None
    return checked


def test_random_kills_leave_whole_files_and_the_run_completes(
    tmp_path: Path, tiny_model: Path
) -> None:
    recipe_path = write_recipe(tmp_path, tiny_model)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["strategy"] = {"name": "olora", "replay": {"per_task": 2}}
    recipe["training"].update({"max_steps": 150, "checkpoint_every": 4, "log_every": 1})
    recipe_path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "pecft_cli", "train", str(recipe_path)]
    delays = random.Random(7)
    run_dir = tmp_path / "run"
    kills, checked = 0, 0
    for _ in range(6):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()  # kill a random moment after the run has begun writing
        while not (run_dir / "run.json").is_file() and process.poll() is None:
            assert time.monotonic() - started < 300
            time.sleep(0.01)
        try:
            process.wait(timeout=delays.uniform(0.0, 4.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills += 1
        if run_dir.is_dir():
            checked += check_every_file(run_dir)
        state = read_json_file(run_dir / "run.json") or {}
        if state.get("status") == "completed":
            break
    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "completed" and state["tasks_done"] == ["codes", "yesno"]
    assert check_every_file(run_dir) > 10
    assert [p.name for p in run_dir.rglob(".*")] == [".lock"]
    assert kills >= 3 and checked > 0, (kills, checked)
