"""SmolLM2-135M-Instruct, the real pretrained model, through two small tasks of the quickstart.

Slow by unit-test standards (about a minute on two cores), and the only test that shows LoRA
training changes what a real model answers, so it runs in CI.
"""

import json
from pathlib import Path

import pytest
import yaml
from conftest import rescore_with_stock_peft

from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("real")
    raw = yaml.safe_load(QUICKSTART.read_text())
    by_name = {task["name"]: task for task in raw["tasks"]}
    raw["tasks"] = [by_name["numeric_value"], by_name["unicode_category"]]  # generation, choice
    for task in raw["tasks"]:
        for split in ("train", "eval"):
            task[split] = str(QUICKSTART.parent / task[split])
    raw["output_dir"] = str(folder / "run")
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(
        recipe_path, ["training.max_steps=12", "evaluation.limit=16", "training.log_every=3"]
    )
    return run(recipe)


@pytest.mark.real_model
def test_real_run_writes_the_folder_contract(real_run) -> None:
    folder = real_run.folder
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == [
        "01-numeric_value",
        "02-unicode_category",
    ]
    tasks, rows = read_matrix(folder / "eval/matrix.csv")
    assert tasks == ["numeric_value", "unicode_category"]
    assert list(rows) == ["base", "numeric_value", "unicode_category"]
    metrics = json.loads((folder / "eval/metrics.json").read_text())
    assert metrics["acc"] == pytest.approx(sum(rows["unicode_category"]) / 2)
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"


@pytest.mark.real_model
def test_real_training_lowers_the_loss_and_teaches_the_task(real_run) -> None:
    for task in ("numeric_value", "unicode_category"):
        summary = real_run.state.training[task]
        assert summary["last_loss"] < 0.7 * summary["first_loss"], summary
    # after its own task, the model reads numeric values better than the base model
    assert real_run.matrix["numeric_value"][0] > real_run.matrix["base"][0] + 0.25


@pytest.mark.real_model
def test_real_adapters_reloaded_by_stock_peft_reproduce_the_matrix(real_run) -> None:
    for stage, task in enumerate(real_run.tasks, start=1):
        assert rescore_with_stock_peft(real_run.folder, stage) == real_run.matrix[task]
