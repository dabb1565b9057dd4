"""EWC on the LoRA weights: a Fisher estimate, a penalty that is zero at the anchor, and a pull
that keeps the weights nearer to where the first task left them than plain seq does."""

from pathlib import Path

import torch
from conftest import distance_from_first_task, write_recipe
from transformers import AutoModelForCausalLM

from pecft_cli.data.tasks import Example
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.strategies import build_strategy
from pecft_cli.training.loop import run


def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it(tiny_model: Path) -> None:
    section = StrategySection(name="ewc", options={"weight": 10.0, "fisher_examples": 4})
    strategy, _ = build_strategy(section, LoraSection(r=2, alpha=4, dropout=0.0), ["a", "b"], 0)
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    examples = [
        Example(row=i, prompt="p", target="t", prompt_ids=[5, 6, i + 7], target_ids=[9, 10])
        for i in range(6)
    ]
    assert strategy.extra_loss(model, strategy.stages()[0]) is None
    strategy.after_stage(model, strategy.stages()[0], examples)
    assert all(value.sum() > 0 for value in strategy.fisher.values())
    assert strategy.extra_loss(model, strategy.stages()[1]).item() == 0.0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
    assert strategy.extra_loss(model, strategy.stages()[1]).item() > 0.0


def test_ewc_keeps_the_weights_nearer_the_first_task_than_seq(
    tmp_path: Path, tiny_model: Path
) -> None:
    runs = {}
    for name, overrides in {
        "seq": ["strategy.name=seq"],
        "ewc": ["strategy.name=ewc", "strategy.options.weight=100000"],
    }.items():
        recipe_file = write_recipe(tmp_path / name, tiny_model)
        runs[name] = run(load_recipe(recipe_file, [*overrides, "training.max_steps=10"])).folder
    assert distance_from_first_task(runs["ewc"]) < 0.5 * distance_from_first_task(runs["seq"])
