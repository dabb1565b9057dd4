"""Joint training: one stage on all tasks' data, one matrix row, and the average as its metric."""

from pathlib import Path

import pytest
from conftest import rescore_with_stock_peft, write_recipe

from pecft_cli.evaluation.rerun import evaluate_run
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run


def test_joint_trains_once_on_every_task(tmp_path: Path, tiny_model: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_model), ["strategy.name=joint"])
    result = run(recipe)
    folder = result.folder
    assert [p.name for p in (folder / "adapters").iterdir()] == ["01-joint"]
    tasks, rows = read_matrix(folder / "eval/matrix.csv")
    assert list(rows) == ["base", "joint"]
    assert result.state.training["joint"]["examples"] == 8 + 6
    assert result.state.tasks_done == ["codes", "yesno"]
    assert result.metrics["acc"] == pytest.approx(sum(rows["joint"]) / 2)
    assert result.metrics["bwt"] is None and result.metrics["forgetting"] is None
    assert rescore_with_stock_peft(folder, 1) == rows["joint"]
    again = evaluate_run(folder)
    assert again.matrix == rows and again.metrics == result.metrics
