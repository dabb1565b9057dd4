"""separate on the tiny model: each task trains a LoRA of its own with no other active, so a later
task never changes what an earlier one's LoRA answers, and every adapter is that task's LoRA."""

from pathlib import Path

import torch
from conftest import rescore_with_stock_peft, write_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.strategies import build_strategy
from pecft_cli.training.loop import run


def test_each_task_trains_alone_and_the_earlier_answers_stay(tiny_model: Path) -> None:
    section = StrategySection(name="separate")
    strategy, _ = build_strategy(section, LoraSection(r=4, dropout=0.0), ["a", "b"], seed=0)
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    first, second = strategy.stages()
    ids = torch.tensor([[5, 6, 7, 8]])
    strategy.before_stage(model, first, [])
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    strategy.before_stage(model, second, [])
    assert list(model.base_model.active_adapters) == ["task02"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".task02." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    strategy.serve(model, first)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_every_adapter_is_its_own_task_lora(tmp_path: Path, tiny_model: Path) -> None:
    recipe = load_recipe(
        write_recipe(tmp_path, tiny_model), ["strategy.name=separate", "training.max_steps=4"]
    )
    result = run(recipe)
    first = load_file(result.folder / "adapters/01-codes/adapter_model.safetensors")
    second = load_file(result.folder / "adapters/02-yesno/adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert not any(torch.equal(first[k], second[k]) for k in first if "lora_B" in k)
    _, rows = read_matrix(result.folder / "eval/matrix.csv")
    assert rescore_with_stock_peft(result.folder, 2) == rows["yesno"]
