"""InfLoRA on the tiny model: each new A is fixed orthogonal to the inputs earlier tasks fed each
layer, only B trains, and the second task leaves the first task's outputs nearer where they were
than IncLoRA does."""

import random
from pathlib import Path

import pytest
import torch
from conftest import rescore_with_stock_peft, write_recipe
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pecft_cli.data.tasks import Example, load_task
from pecft_cli.errors import PecftError
from pecft_cli.model.load import load_tokenizer
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.strategies import build_strategy
from pecft_cli.strategies.inflora import grow_basis, input_covariance
from pecft_cli.strategies.stacked import lora_modules, task_adapter
from pecft_cli.training.loop import run

LORA = LoraSection(r=4, alpha=8, dropout=0.0)


def examples(seed: int, low: int, high: int, count: int = 12) -> list[Example]:
    """Token sequences drawn from one band of the vocabulary: a task with inputs of its own."""
    draw = random.Random(seed)
    out = []
    for row in range(count):
        prompt = [draw.randrange(low, high) for _ in range(draw.randrange(3, 7))]
        out.append(Example(row, "", "", prompt, [draw.randrange(low, high)]))
    return out


def inflora(tiny_model: Path, **options):
    section = StrategySection(name="inflora", options=options)
    strategy, _ = build_strategy(section, LORA, ["a", "b"], seed=0)
    return strategy, strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))


def test_new_a_is_orthogonal_to_the_basis_and_only_b_trains(tiny_model: Path) -> None:
    strategy, model = inflora(tiny_model, threshold_first=0.9)
    first, second = strategy.stages()
    strategy.before_stage(model, first, examples(0, 5, 40))
    strategy.after_stage(model, first, examples(0, 5, 40))
    strategy.before_stage(model, second, examples(1, 60, 100))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_B.task02" in n for n in trainable)
    for key, module in lora_modules(model, task_adapter(1)).items():
        (subspace,) = strategy.parts  # InfLoRA's one part: the input subspace
        basis = subspace.bases[key]
        assert 0 < basis.shape[1] <= basis.shape[0] - LORA.r
        torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
        new_a = module.lora_A[task_adapter(1)].weight
        assert (new_a @ basis).abs().max().item() < 1e-5


def test_the_basis_grows_until_it_holds_the_threshold_of_the_energy() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(200, 3) @ torch.randn(3, 10)  # energy in three directions
    covariance = inputs.T @ inputs
    basis = grow_basis(None, covariance, 0.999999, room=8)
    assert basis.shape == (10, 3)
    more = torch.randn(200, 10)
    grown = grow_basis(basis, more.T @ more, 0.5, room=8)
    assert 3 < grown.shape[1] <= 8
    torch.testing.assert_close(grown[:, :3], basis)
    assert grow_basis(grown, more.T @ more, 1.0, room=8).shape[1] == 8


def test_covariance_leaves_padding_out(tiny_model: Path) -> None:
    strategy, model = inflora(tiny_model)
    layers = lora_modules(model, task_adapter(0))
    short, long = examples(2, 5, 40, count=1)[0], examples(3, 5, 40, count=1)[0]
    long.prompt_ids = long.prompt_ids * 3
    together = input_covariance(model, layers, [short, long])
    alone = [input_covariance(model, layers, [one]) for one in (short, long)]
    for key in layers:
        torch.testing.assert_close(
            together[key], alone[0][key] + alone[1][key], atol=1e-4, rtol=1e-4
        )


def first_task_shift(run_folder: Path, tiny_model: Path) -> float:
    """How far the second task moved the logits on the first task's training prompts."""
    recipe = load_recipe(run_folder / "recipe.yaml")
    tokenizer = load_tokenizer(recipe.model)
    data = load_task(recipe.tasks[0], recipe, tokenizer)
    ids = [torch.tensor([e.prompt_ids + e.target_ids]) for e in data.train]
    logits = []
    for adapter in ("01-codes", "02-yesno"):
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        model = PeftModel.from_pretrained(base, run_folder / "adapters" / adapter).eval()
        with torch.inference_mode():
            logits.append(torch.cat([model(input_ids=row).logits[0] for row in ids]))
    return (logits[1] - logits[0]).norm().item()


def test_inflora_keeps_the_first_task_where_inclora_moves_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    shifts = {}
    for name, extra in [("inclora", []), ("inflora", ["strategy.options.threshold_first=0.999"])]:
        folder = tmp_path / name
        folder.mkdir()
        overrides = [f"strategy.name={name}", "training.max_steps=8", *extra]
        result = run(load_recipe(write_recipe(folder, tiny_model), overrides))
        shifts[name] = first_task_shift(result.folder, tiny_model)
    assert shifts["inflora"] < 0.5 * shifts["inclora"]
    _, rows = read_matrix(tmp_path / "inflora/run/eval/matrix.csv")
    assert rescore_with_stock_peft(tmp_path / "inflora/run", 2) == rows["yesno"]


def test_thresholds_must_rise() -> None:
    section = StrategySection(
        name="inflora", options={"threshold_first": 0.99, "threshold_last": 0.9}
    )
    with pytest.raises(PecftError, match="threshold_last must be at least threshold_first"):
        build_strategy(section, LORA, ["a", "b"], seed=0)
