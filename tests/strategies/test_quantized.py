"""Every strategy on a 4-bit (NF4, QLoRA) base: it trains, and each saved adapter, loaded by stock
PEFT onto the same 4-bit base, reproduces its matrix row."""

from pathlib import Path

import pytest
from conftest import rescore_with_stock_peft, write_recipe

from pecft_cli.recipe import load_recipe
from pecft_cli.runs import read_matrix
from pecft_cli.strategies import STRATEGIES
from pecft_cli.train import run

OPTIONS = {"replay": ["strategy.options.per_task=2"]}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_runs_on_a_4bit_base(strategy: str, tmp_path: Path, tiny_model_64: Path) -> None:
    overrides = [f"strategy.name={strategy}", "model.quantization=4bit", "training.max_steps=2"]
    recipe = load_recipe(
        write_recipe(tmp_path, tiny_model_64), overrides + OPTIONS.get(strategy, [])
    )
    result = run(recipe)
    _, rows = read_matrix(result.folder / "eval/matrix.csv")
    stages = result.state["stages"]
    for number, stage in enumerate(stages, start=1):
        assert rescore_with_stock_peft(result.folder, number) == rows[stage]
