"""Sharded training: two gloo ranks with the base model split by FSDP2 train what data-parallel
ranks (or one process) train, through `--fsdp` and through Accelerate's FSDP config; what cannot
shard is refused before anything is loaded or written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import invoke, write_recipe
from safetensors.torch import load_file

from pecft_cli.errors import PecftError
from pecft_cli.parallel.launch import launch_command
from pecft_cli.parallel.sharding import check_request

ROOT = Path(__file__).resolve().parents[2]
PECFT = str(Path(sys.executable).parent / "pecft")


def recipe_for(folder: Path, model: Path, **training: object) -> Path:
    """The two-task tiny recipe with batches of 3, or as given: 3 over two ranks leaves one
    rank a single example, and a batch of 1 leaves the other rank none at all."""
    path = write_recipe(folder, model)
    recipe = yaml.safe_load(path.read_text())
    recipe["training"].update({"max_steps": 5, "batch_size": 3, **training})
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train(recipe: Path, out: Path, *options: str, launcher: list[str] | None = None) -> Path:
    """`pecft train` in a subprocess (the sets after the recipe); returns the run folder."""
    command = [*(launcher or [PECFT]), "train", str(recipe), "--set", f"output_dir={out}"]
    done = subprocess.run(
        [*command, *options], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def same_adapters(one: Path, other: Path, atol: float) -> None:
    names = sorted(p.name for p in (one / "adapters").iterdir())
    assert names == sorted(p.name for p in (other / "adapters").iterdir())
    for name in names:
        a = load_file(one / "adapters" / name / "adapter_model.safetensors")
        b = load_file(other / "adapters" / name / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=atol, rtol=1e-4)


def same_predictions(one: Path, other: Path) -> None:
    files = sorted((one / "eval/predictions").rglob("*.jsonl"))
    assert files
    for path in files:
        assert (other / path.relative_to(one)).read_text() == path.read_text()


def test_a_sharded_run_trains_what_a_data_parallel_run_does(
    tmp_path: Path, tiny_model: Path
) -> None:
    # Batches of one: rank 1 never has an example, and runs the stand-in instead.
    recipe = recipe_for(tmp_path, tiny_model, batch_size=1)
    parallel = train(recipe, tmp_path / "ddp", "--num-processes", "2")
    sharded = train(recipe, tmp_path / "fsdp", "--num-processes", "2", "--fsdp")
    state = json.loads((sharded / "run.json").read_text())
    assert (state["processes"], state["sharding"], state["status"]) == (2, "fsdp2", "completed")
    assert json.loads((parallel / "run.json").read_text())["sharding"] == "none"
    assert (sharded / "eval/matrix.csv").read_text() == (parallel / "eval/matrix.csv").read_text()
    same_predictions(parallel, sharded)
    same_adapters(parallel, sharded, atol=5e-5)
    steps = (sharded / "logs/train.jsonl").read_text().splitlines()
    assert len(steps) == len((parallel / "logs/train.jsonl").read_text().splitlines())


def test_a_stacked_strategy_shards_without_folding_and_matches_one_process(
    tmp_path: Path, tiny_model: Path
) -> None:
    # Without dropout, a stacked LoRA computes what the one folded into the weights does.
    recipe = recipe_for(tmp_path, tiny_model)
    sets = ["--set", "strategy.name=olora", "--set", "lora.dropout=0"]
    single = train(recipe, tmp_path / "one", *sets)
    sharded = train(recipe, tmp_path / "fsdp", *sets, "--num-processes", "2", "--fsdp")
    assert (sharded / "eval/matrix.csv").read_text() == (single / "eval/matrix.csv").read_text()
    same_predictions(single, sharded)
    same_adapters(single, sharded, atol=1e-5)


def test_accelerates_fsdp_config_shards_a_4bit_base(tmp_path: Path, tiny_model_64: Path) -> None:
    recipe = recipe_for(tmp_path, tiny_model_64)
    sets = ["--set", "model.quantization=4bit"]
    single = train(recipe, tmp_path / "one", *sets)
    config = yaml.safe_load((ROOT / "cli/accelerate/fsdp.yaml").read_text())
    config.update(num_processes=2, use_cpu=True)  # the GPU config, on this host's CPU
    config.pop("gpu_ids")
    config_file = tmp_path / "fsdp-cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    launcher = [*accelerate, "--config_file", str(config_file), "--module", "pecft_cli"]
    sharded = train(recipe, tmp_path / "fsdp", *sets, launcher=launcher)
    state = json.loads((sharded / "run.json").read_text())
    assert (state["processes"], state["sharding"]) == (2, "fsdp2")
    assert (sharded / "eval/matrix.csv").read_text() == (single / "eval/matrix.csv").read_text()
    # 4-bit products sum in another order per process: 1.8e-4 apart on an AVX-512/AMX Xeon.
    same_adapters(single, sharded, atol=5e-4)


def test_a_strategy_that_trains_the_base_weights_is_refused_before_loading(
    tmp_path: Path, tiny_model: Path
) -> None:
    recipe = recipe_for(tmp_path, tiny_model)
    out = tmp_path / "osf"
    command = [PECFT, "train", str(recipe), "--set", "strategy.name=osf"]
    command += ["--set", f"output_dir={out}", "--num-processes", "2", "--fsdp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "'osf' trains the base model's own weight matrices" in done.stderr
    assert "Traceback" not in done.stderr and "loading model" not in done.stderr
    assert not out.exists()


def test_fsdp_needs_several_processes(recipe_file: Path) -> None:
    result = invoke("train", recipe_file, "--fsdp")
    assert result.exit_code == 2
    assert "--num-processes 2 or more" in result.output
    assert not (recipe_file.parent / "run").exists()


def test_fsdp_version_1_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(PecftError, match="FSDP2 only"):
        check_request("seq", shards=True)


def test_the_relaunch_asks_accelerate_for_fsdp() -> None:
    command, env = launch_command(2, ["train", "r.yaml", "--num-processes", "2", "--fsdp"], True)
    assert (env["ACCELERATE_USE_FSDP"], env["FSDP_VERSION"]) == ("true", "2")
    assert "--fsdp" not in command and command[-2:] == ["train", "r.yaml"]
    _, plain = launch_command(2, ["train", "r.yaml"])
    assert plain.get("ACCELERATE_USE_FSDP") == os.environ.get("ACCELERATE_USE_FSDP")
