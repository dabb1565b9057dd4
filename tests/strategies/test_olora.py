"""O-LoRA and IncLoRA on the tiny model: frozen earlier LoRAs, the reference's loss terms, and an
export that stock PEFT loads with the same outputs as the stack of per-task LoRAs."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.strategies import build_strategy
from pecft_cli.strategies.olora import l2_size, orthogonality
from pecft_cli.training.loop import run

LORA = LoraSection(r=4, alpha=8, dropout=0.0)


def lora_layers(model: PeftModel):
    return [m for m in model.modules() if hasattr(m, "lora_A") and "task01" in m.lora_A]


def olora(tiny_model: Path, routing: str = "prototype", **options):
    """O-LoRA on the tiny model; routed by default, so every LoRA stays in the model."""
    section = StrategySection(name="olora", options=options, routing=routing)
    strategy, _ = build_strategy(section, LORA, ["a", "b", "c"], seed=0)
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    return strategy, model


def test_earlier_loras_stay_frozen_and_active(tiny_model: Path) -> None:
    strategy, model = olora(tiny_model)
    strategy.before_stage(model, strategy.stages()[0], [])
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B["task01"].weight)
    strategy.before_stage(model, strategy.stages()[1], [])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".task01." in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".task02." in n for n in trainable)
    assert list(model.base_model.active_adapters) == ["task01", "task02"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.tensor([[5, 6, 7, 8]])
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss + strategy.extra_loss(
            model, strategy.stages()[1]
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert any(
        not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if "lora_B.task02" in n
    )


def test_loss_terms_are_computed_as_the_reference_does(tiny_model: Path) -> None:
    strategy, model = olora(tiny_model, lambda1=0.5, lambda2=0.25)
    strategy.before_stage(model, strategy.stages()[0], [])
    strategy.before_stage(model, strategy.stages()[1], [])
    strategy.before_stage(model, strategy.stages()[2], [])
    expected_orth = torch.zeros(())
    expected_l2 = torch.zeros(())
    for layer in lora_layers(model):
        a1, a2, a3 = (layer.lora_A[f"task0{i}"].weight for i in (1, 2, 3))
        expected_orth += torch.abs(torch.cat([a1, a2]) @ a3.T).sum()
        expected_l2 += a3.pow(2).sum().sqrt() + layer.lora_B["task03"].weight.pow(2).sum().sqrt()
    assert orthogonality(model, 2).item() == pytest.approx(expected_orth.item(), rel=1e-5)
    assert l2_size(model, 2).item() == pytest.approx(expected_l2.item(), rel=1e-5)
    combined = strategy.extra_loss(model, strategy.stages()[2]).item()
    assert combined == pytest.approx(
        0.5 * expected_orth.item() + 0.25 * expected_l2.item(), rel=1e-5
    )
    assert orthogonality(model, 0).item() == 0.0


def test_unrouted_finished_loras_fold_into_the_weights(tiny_model: Path) -> None:
    torch.manual_seed(1)
    strategy, model = olora(tiny_model, routing="none")
    torch.manual_seed(1)
    stacked_twin, twin = olora(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    for one, net in ((strategy, model), (stacked_twin, twin)):
        one.before_stage(net, one.stages()[0], [])
        torch.manual_seed(0)
        for layer in lora_layers(net):
            torch.nn.init.normal_(layer.lora_B["task01"].weight)
        one.before_stage(net, one.stages()[1], [])
    assert list(model.peft_config) == ["task02"] and list(twin.peft_config) == ["task01", "task02"]
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, twin(input_ids=ids).logits)
    for layer in [m for m in twin.modules() if hasattr(m, "lora_A") and "task02" in m.lora_A]:
        torch.nn.init.normal_(layer.lora_A["task02"].weight)
    for name, parameter in model.named_parameters():
        if "lora_A.task02" in name:
            parameter.data.copy_(dict(twin.named_parameters())[name])
    torch.testing.assert_close(
        orthogonality(model, 1, strategy.folded_a), orthogonality(twin, 1), rtol=1e-5, atol=1e-6
    )


def test_per_task_lambdas(tiny_model: Path) -> None:
    strategy, model = olora(tiny_model, lambda1={"default": 0.0, "c": 2.0})
    for index in range(3):
        strategy.before_stage(model, strategy.stages()[index], [])
    assert strategy.extra_loss(model, strategy.stages()[1]) is None
    assert strategy.extra_loss(model, strategy.stages()[2]).item() == pytest.approx(
        2 * orthogonality(model, 2).item()
    )


@pytest.fixture(scope="module")
def olora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    from conftest import write_recipe

    folder = tmp_path_factory.mktemp("olora")
    recipe = load_recipe(
        write_recipe(folder, tiny_model),
        ["strategy.name=olora", "strategy.options.lambda1=5", "training.max_steps=8"],
    )
    run(recipe)
    return folder / "run"


def test_orthogonality_falls_while_the_second_task_trains(olora_run: Path) -> None:
    log = [json.loads(line) for line in (olora_run / "logs/train.jsonl").read_text().splitlines()]
    second = [entry["extra_loss"] for entry in log if entry["task"] == "yesno"]
    assert all("extra_loss" not in entry for entry in log if entry["task"] == "codes")
    assert second[-1] < second[0]


def test_stacked_export_equals_the_sum_of_the_task_loras(olora_run: Path, tiny_model: Path) -> None:
    ids = torch.tensor([[3, 9, 4, 12, 7, 30]])
    exported = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), olora_run / "adapters/02-yesno"
    ).eval()
    stack = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        olora_run / "task_loras/01-codes",
        adapter_name="one",
    )
    stack.load_adapter(olora_run / "task_loras/02-yesno", adapter_name="two")
    stack.base_model.set_adapter(["one", "two"])
    stack.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        want = stack(input_ids=ids).logits
        got = exported(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    config = json.loads((olora_run / "adapters/02-yesno/adapter_config.json").read_text())
    assert config["r"] == 2 * 4


def test_every_exported_adapter_reproduces_its_matrix_row(olora_run: Path) -> None:
    from conftest import rescore_with_stock_peft

    from pecft_cli.runfolder.matrix import read_matrix

    tasks, rows = read_matrix(olora_run / "eval/matrix.csv")
    for stage, name in enumerate(tasks, start=1):
        assert rescore_with_stock_peft(olora_run, stage) == rows[name]
