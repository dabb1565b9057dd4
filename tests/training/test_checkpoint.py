"""Preemption-safe resume on the tiny model: a run killed mid-task, or stopped by SIGTERM, and then
started again with the same command ends with the adapters and matrix of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import invoke, write_recipe
from safetensors.torch import load_file

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.claim import RunLock
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pecft_cli.training.loop import run

STRATEGIES = {
    "seq": {"name": "seq"},
    "olora+replay": {"name": "olora", "replay": {"per_task": 3, "ratio": 0.5}},
    "ewc": {"name": "ewc", "options": {"fisher_examples": 4}},
    "lwf": {"name": "lwf"},
    "inflora": {"name": "inflora", "options": {"feature_examples": 4}},
    "osf": {"name": "osf"},
    "separate+routing": {"name": "separate", "routing": "prototype"},
    "chain+routing": {"name": "chain", "routing": "prototype"},
    "separate+gaussian": {"name": "separate", "routing": "gaussian", "router": {"holdout": 2}},
}


def long_recipe(folder: Path, tiny_model: Path, strategy: dict, output: str) -> Path:
    """A run with enough steps in each task to be stopped in the middle of one."""
    path = write_recipe(folder, tiny_model)
    recipe = yaml.safe_load(path.read_text())
    recipe["strategy"] = strategy
    recipe["output_dir"] = str(folder / output)
    recipe["lora"]["dropout"] = 0.1  # resuming must restore the random state too
    recipe["training"].update({"max_steps": 40, "checkpoint_every": 3, "log_every": 1})
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def start(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pecft_cli", "train", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(process: subprocess.Popen, log: Path, task_index: int, step: int) -> None:
    """Block until the run has logged `step` of task `task_index`; fail if it ends first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.is_file():
            for line in log.read_text().split("\n")[:-1]:  # the last may be half written
                entry = json.loads(line)
                if (entry["task_index"], entry["step"]) >= (task_index, step):
                    return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.002)
    raise AssertionError("the run never reached the step")


def same_results(a: Path, b: Path) -> None:
    for adapter in sorted((a / "adapters").iterdir()):
        one = load_file(adapter / "adapter_model.safetensors")
        other = load_file(b / "adapters" / adapter.name / "adapter_model.safetensors")
        assert one.keys() == other.keys()
        assert all(torch.equal(one[key], other[key]) for key in one), adapter.name
    assert (a / "eval/matrix.csv").read_text() == (b / "eval/matrix.csv").read_text()

    def steps(folder: Path) -> list:
        lines = (folder / "logs/train.jsonl").read_text().splitlines()
        return [(e["task"], e["step"], e["loss"]) for e in map(json.loads, lines)]

    assert steps(a) == steps(b)
    if (a / "router").is_dir():  # the router is rebuilt bit for bit after a resume
        for path in sorted((a / "router").iterdir()):
            assert path.read_bytes() == (b / "router" / path.name).read_bytes(), path.name
        ours, theirs = (json.loads((f / "run.json").read_text()) for f in (a, b))
        for key in ("routing_accuracy", "routing_confusion", "routing_estimate"):
            assert ours[key] == theirs[key], key


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    strategy: str, tmp_path: Path, tiny_model: Path
) -> None:
    reference = run(load_recipe(long_recipe(tmp_path, tiny_model, STRATEGIES[strategy], "ref")))
    recipe = long_recipe(tmp_path, tiny_model, STRATEGIES[strategy], "killed")
    process = start(recipe)
    wait_for_step(process, tmp_path / "killed/logs/train.jsonl", task_index=1, step=8)
    process.kill()
    process.wait()
    state = json.loads((tmp_path / "killed/run.json").read_text())
    assert state["status"] == "running" and state["tasks_done"] == ["codes"]
    checkpoint = load_checkpoint(RunFolder(tmp_path / "killed"))
    assert checkpoint is not None and checkpoint.stage_index == 1 and checkpoint.step >= 6

    resumed = invoke("train", recipe)
    assert resumed.exit_code == 0, resumed.output
    same_results(reference.folder, tmp_path / "killed")
    state = json.loads((tmp_path / "killed/run.json").read_text())
    assert state["status"] == "completed" and len(state["resumed_at"]) == 1
    assert not (tmp_path / "killed/checkpoint").exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_checkpoints_exits_75_and_resumes(
    stop: signal.Signals, tmp_path: Path, tiny_model: Path
) -> None:
    reference = run(load_recipe(long_recipe(tmp_path, tiny_model, STRATEGIES["seq"], "ref")))
    recipe = long_recipe(tmp_path, tiny_model, STRATEGIES["seq"], "stopped")
    process = start(recipe)
    wait_for_step(process, tmp_path / "stopped/logs/train.jsonl", task_index=0, step=4)
    process.send_signal(stop)
    assert process.wait(timeout=60) == 75, process.stderr.read()
    assert "Run the same command again to resume" in process.stderr.read()
    state = json.loads((tmp_path / "stopped/run.json").read_text())
    assert state["status"] == "preempted"
    checkpoint = load_checkpoint(RunFolder(tmp_path / "stopped"))
    assert checkpoint is not None and checkpoint.stage_index == 0 and checkpoint.step >= 4

    assert invoke("train", recipe).exit_code == 0
    same_results(reference.folder, tmp_path / "stopped")
    again = invoke("train", recipe)
    assert again.exit_code == 0
    assert "already complete" in again.output


def test_a_crash_while_writing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = RunFolder(tmp_path)
    first = Checkpoint(
        stage_index=1,
        step=0,
        lora={"w": torch.ones(2)},
        strategy={},
        rng=[{"torch": torch.get_rng_state()}],
    )
    save_checkpoint(folder, first, "a")

    def torn(obj, path):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        second = Checkpoint(stage_index=2, step=5, lora={"w": torch.zeros(2)}, strategy={})
        save_checkpoint(folder, second, "b")
    kept = load_checkpoint(folder)
    assert kept is not None and kept.stage_index == 1 and torch.equal(kept.lora["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint/state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PecftError, match="does not load.*--overwrite"):
        load_checkpoint(folder)


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(
    recipe_file: Path,
) -> None:
    root = recipe_file.parent / "run"
    lock = RunLock(root)
    lock.acquire()
    result = invoke("train", recipe_file)
    assert result.exit_code == 2
    assert f"in use by another pecft run (pid {os.getpid()}" in " ".join(result.output.split())
    lock.release()

    hold = (
        "import pathlib, time; from pecft_cli import runs; "
        f"RunLock(pathlib.Path({str(root)!r})).acquire(); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold])
    deadline = time.monotonic() + 30
    while str(holder.pid) not in (root / ".lock").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    holder.kill()
    holder.wait()
    result = invoke("train", recipe_file)
    assert result.exit_code == 0, result.output


def test_without_a_checkpoint_a_run_with_finished_tasks_cannot_resume(recipe_file: Path) -> None:
    assert invoke("train", recipe_file).exit_code == 0
    state_file = recipe_file.parent / "run/run.json"
    state = json.loads(state_file.read_text())
    state["status"] = "running"
    state_file.write_text(json.dumps(state))
    result = invoke("train", recipe_file)
    assert result.exit_code == 2
    assert "left no checkpoint to resume from" in " ".join(result.output.split())
