"""The run folder's size before training: the estimate, the free-space check, and
`output.stage_adapters: last`, which keeps the task LoRAs and the latest stage's adapter only."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import invoke, snapshot

from pecft_cli.recipe.load import validate_recipe
from pecft_cli.training import disk

# SmolLM2-135M: 30 layers whose q_proj maps 576 to 576 features and v_proj 576 to 192.
SMOLLM2 = {
    f"model.layers.{i}.self_attn.{name}": SimpleNamespace(in_features=576, out_features=out)
    for i in range(30)
    for name, out in (("q_proj", 576), ("v_proj", 192))
}


def recipe_of(tasks: int, *, strategy: str = "inclora", keep: str = "all", r: int = 8):
    return validate_recipe(
        {
            "name": "stream",
            "output_dir": "/nonexistent/stream",
            "model": {"path": "m"},
            "lora": {"r": r},
            "strategy": {"name": strategy},
            "output": {"stage_adapters": keep},
            "tasks": [
                {
                    "name": f"t{i}",
                    "train": "a.jsonl",
                    "eval": "b.jsonl",
                    "prompt": "{x}",
                    "target": "y",
                }
                for i in range(tasks)
            ],
        }
    )


def test_stacked_adapters_grow_with_the_square_of_the_task_count_unless_only_the_last_is_kept() -> (
    None
):
    one = 8 * 30 * (576 + 576 + 576 + 192) * 4  # a task's rank-8 LoRA in float32: 1.8 MB
    stacked = disk.estimate_disk(recipe_of(50), SMOLLM2)
    assert stacked.adapters == one * 50 * 51 // 2  # 2.3 GB, as measured on SmolLM2
    assert 2.3e9 < stacked.adapters < 2.4e9
    assert stacked.task_loras == one * 50
    last = disk.estimate_disk(recipe_of(50, keep="last"), SMOLLM2)
    assert last.adapters == one * (50 + 49)  # the last stage, and the one before for a moment
    assert last.task_loras == stacked.task_loras
    seq = disk.estimate_disk(recipe_of(50, strategy="seq"), SMOLLM2)
    assert (seq.adapters, seq.task_loras) == (one * 50, 0)
    joint = disk.estimate_disk(recipe_of(50, strategy="joint"), SMOLLM2)
    assert joint.adapters == one
    assert stacked.disk == Path("/")


def test_a_run_that_cannot_fit_its_disk_is_refused_before_anything_is_written(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    before = snapshot(recipe_file.parent)
    result = invoke("train", recipe_file, "--set", "strategy.name=inclora")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "output_dir: this run cannot fit on its disk: it needs at least" in message
    assert "of 1000 bytes free on" in message and "output.stage_adapters: last" in message
    assert snapshot(recipe_file.parent) == before
    assert not (recipe_file.parent / "run").exists()


def test_validate_prints_the_run_folders_size_beside_the_memory(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, "--set", "strategy.name=olora")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    memory = next(i for i, line in enumerate(lines) if line.startswith("memory: at least"))
    assert lines[memory + 1].startswith("disk: at least ")
    assert "for the run folder (adapters " in lines[memory + 1]


def test_keeping_the_last_stage_keeps_every_task_lora_and_the_same_last_adapter(
    recipe_file: Path,
) -> None:
    runs = {}
    for keep in ("all", "last"):
        out = recipe_file.parent / keep
        options = ["strategy.name=inclora", f"output.stage_adapters={keep}", f"output_dir={out}"]
        result = invoke("train", recipe_file, *[a for o in options for a in ("--set", o)])
        assert result.exit_code == 0, result.output
        runs[keep] = out
    assert sorted(p.name for p in (runs["last"] / "adapters").iterdir()) == ["02-yesno"]
    assert sorted(p.name for p in (runs["all"] / "adapters").iterdir()) == ["01-codes", "02-yesno"]
    for folder in ("adapters/02-yesno", "task_loras/01-codes", "task_loras/02-yesno"):
        weights = f"{folder}/adapter_model.safetensors"
        assert (runs["last"] / weights).read_bytes() == (runs["all"] / weights).read_bytes()
    assert (runs["last"] / "eval/matrix.csv").read_text() == (
        runs["all"] / "eval/matrix.csv"
    ).read_text()
    rescored = invoke("eval", runs["last"], "--out", recipe_file.parent / "again", "--json")
    assert rescored.exit_code == 0, rescored.output
    assert list(json.loads(rescored.stdout)["matrix"]) == ["base", "yesno"]
