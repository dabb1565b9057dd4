"""Every strategy on a 4-bit (NF4, QLoRA) base: it trains, and each saved adapter, loaded by stock
PEFT onto the same 4-bit base, reproduces its matrix row."""

from pathlib import Path

import pytest
from conftest import rescore_with_stock_peft, write_recipe

from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.strategies import TRAITS
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run

OPTIONS = {"replay": ["strategy.options.per_task=2"]}


@pytest.mark.parametrize(
    "strategy", [name for name in sorted(TRAITS) if not TRAITS[name].full_precision_only]
)
def test_strategy_runs_on_a_4bit_base(strategy: str, tmp_path: Path, tiny_model_64: Path) -> None:
    overrides = [f"strategy.name={strategy}", "model.quantization=4bit", "training.max_steps=2"]
    recipe = load_recipe(
        write_recipe(tmp_path, tiny_model_64), overrides + OPTIONS.get(strategy, [])
    )
    result = run(recipe)
    _, rows = read_matrix(result.folder / "eval/matrix.csv")
    stages = result.state.stages
    for number, stage in enumerate(stages, start=1):
        assert rescore_with_stock_peft(result.folder, number) == rows[stage]


@pytest.mark.parametrize("routing", ["prototype", "gaussian", "arrow"])
def test_routing_runs_on_a_4bit_base(routing: str, tmp_path: Path, tiny_model_64: Path) -> None:
    overrides = ["strategy.name=separate", f"strategy.routing={routing}", "training.max_steps=2"]
    overrides.append("model.quantization=4bit")
    result = run(load_recipe(write_recipe(tmp_path, tiny_model_64), overrides))
    assert result.state.status == "completed"
    assert (result.folder / "task_loras/02-yesno/adapter_model.safetensors").is_file()


def test_an_evaluation_leaves_4bit_gradients_intact(tmp_path: Path, tiny_model_64: Path) -> None:
    """bitsandbytes re-packs 4-bit weights for CPU inference in eval mode and never packs them
    back; backward through that kernel dropped the LoRA gradients of every later task."""
    import torch
    from peft import get_peft_model

    from pecft_cli.model.load import load_model
    from pecft_cli.strategies.base import lora_config

    recipe = load_recipe(write_recipe(tmp_path, tiny_model_64), ["model.quantization=4bit"])
    model = get_peft_model(load_model(recipe.model), lora_config(recipe.lora))
    for parameter in model.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)  # B = 0 would hide the A gradients
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])

    def gradients() -> list[torch.Tensor | None]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad for p in model.parameters() if p.requires_grad]

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert all(g is not None for g in after)
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new, old)
