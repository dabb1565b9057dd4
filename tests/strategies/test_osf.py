"""OSF through PEFT on the tiny model: each stage folds the last one's change into the weights
and freezes a larger share of their rank, and every exported stage is a plain LoRA that stock
PEFT loads with the trained model's outputs and matrix row."""

from pathlib import Path

import torch
from conftest import rescore_with_stock_peft, write_recipe
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.strategies import build_strategy
from pecft_cli.training.loop import run

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def train_steps(model: PeftModel, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_each_stage_folds_the_last_and_freezes_a_larger_share(tiny_model: Path) -> None:
    section = StrategySection(name="osf")
    strategy, _ = build_strategy(section, LoraSection(), ["a", "b", "c"], seed=0)
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    first, second, _ = strategy.stages()
    strategy.before_stage(model, first, [])
    train_steps(model)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=IDS).logits
    strategy.before_stage(model, second, [])
    with torch.no_grad():
        folded = model(input_ids=IDS).logits  # the new adapter starts as no change
    torch.testing.assert_close(folded, trained, atol=1e-5, rtol=1e-5)
    (name, layer), *_ = strategy.layers.items()
    assert list(model.peft_config) == ["task02"]
    assert layer.effective_rank == {"task02": min(layer.get_base_layer().weight.shape) // 3}
    assert not torch.equal(layer.get_base_layer().weight, strategy.original[name])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("osf_svd_params.task02." in n for n in trainable)


def test_every_stage_exports_a_stock_lora_with_its_row(tmp_path: Path, tiny_model: Path) -> None:
    overrides = ["strategy.name=osf", "training.max_steps=4", "training.lr=1e-3"]
    result = run(load_recipe(write_recipe(tmp_path, tiny_model), overrides))
    _, rows = read_matrix(result.folder / "eval/matrix.csv")
    for number, stage in enumerate(result.state.stages, start=1):
        assert rescore_with_stock_peft(result.folder, number) == rows[stage]
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    exported = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result.folder / "adapters/02-yesno"
    ).eval()
    with torch.no_grad():
        assert not torch.allclose(exported(input_ids=IDS).logits, base(input_ids=IDS).logits)
    assert result.state.trainable_parameters > 2 * 8 * 32 * 4  # full-rank factors, not a LoRA
