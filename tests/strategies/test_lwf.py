"""LwF: the distillation term, its gradients, and what a run keeps of the first task."""

from pathlib import Path

import pytest
import torch
from conftest import distance_from_first_task, rescore_with_stock_peft, write_recipe
from transformers import AutoModelForCausalLM

from pecft_cli.data.batch import training_features
from pecft_cli.data.tasks import Example
from pecft_cli.model.loss import answer_logits
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.strategies import build_strategy
from pecft_cli.strategies.lwf import TEACHER
from pecft_cli.training.loop import run

FEATURES = [
    training_features(
        Example(row=i, prompt="p", target="t", prompt_ids=[5, 6, i + 7], target_ids=[9, 10, 11])
    )
    for i in range(3)
]


def lwf(tiny_model: Path, **options):
    section = StrategySection(name="lwf", options=options)
    strategy, _ = build_strategy(section, LoraSection(r=2, alpha=4, dropout=0.0), ["a", "b"], 0)
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return strategy, model


def term(strategy, model, stage: int) -> torch.Tensor | None:
    model.train()
    batch = answer_logits(model, FEATURES)
    return strategy.batch_loss(model, strategy.stages()[stage], batch)


def test_no_teacher_on_the_first_task(tiny_model: Path) -> None:
    strategy, model = lwf(tiny_model)
    strategy.before_stage(model, strategy.stages()[0], [])
    assert term(strategy, model, 0) is None
    assert TEACHER not in model.peft_config


def test_the_term_is_zero_at_the_teacher_and_grows_as_the_student_moves(tiny_model: Path) -> None:
    strategy, model = lwf(tiny_model, weight=1.0, temperature=2.0)
    strategy.before_stage(model, strategy.stages()[1], [])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert abs(term(strategy, model, 1).item()) < 1e-5
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".default." in name and "lora_B" in name:
                parameter.add_(0.5)
    moved = term(strategy, model, 1)
    assert moved.item() > 1e-3
    moved.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert all(g is None for n, g in grads.items() if f".{TEACHER}." in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".default." in n)


def test_the_weight_and_temperature_scale_the_term(tiny_model: Path) -> None:
    strategy, model = lwf(tiny_model, weight=3.0, temperature=1.0)
    strategy.before_stage(model, strategy.stages()[1], [])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".default." in name and "lora_B" in name:
                parameter.add_(0.5)
    three = term(strategy, model, 1).item()
    strategy.options.weight = 1.0
    assert term(strategy, model, 1).item() == pytest.approx(three / 3, rel=1e-5)


def test_lwf_keeps_the_model_nearer_the_first_task_and_exports_stock_adapters(
    tmp_path: Path, tiny_model: Path
) -> None:
    folders = {}
    for name, overrides in {
        "seq": ["strategy.name=seq"],
        "lwf": ["strategy.name=lwf", "strategy.options.weight=50"],
    }.items():
        recipe_file = write_recipe(tmp_path / name, tiny_model)
        folders[name] = run(load_recipe(recipe_file, [*overrides, "training.max_steps=10"])).folder
    assert distance_from_first_task(folders["lwf"]) < distance_from_first_task(folders["seq"])
    folder = folders["lwf"]
    assert sorted(p.name for p in (folder / "adapters/02-yesno").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    _, rows = read_matrix(folder / "eval/matrix.csv")
    assert rescore_with_stock_peft(folder, 2) == rows["yesno"]
    log = (folder / "logs/train.jsonl").read_text()
    assert '"distill_loss"' in log


def test_a_run_stopped_between_stages_resumes_to_the_uninterrupted_result(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pecft_cli.training.loop as train

    overrides = ["strategy.name=lwf", "training.max_steps=6"]
    reference = run(load_recipe(write_recipe(tmp_path / "ref", tiny_model), overrides))
    stopped = write_recipe(tmp_path / "stopped", tiny_model)
    finish = train.TaskLoop.finish_stage

    def stop_after_the_first(self, stage) -> None:
        finish(self, stage)
        if stage.index == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.TaskLoop, "finish_stage", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        run(load_recipe(stopped, overrides))
    monkeypatch.undo()
    resumed = run(load_recipe(stopped, overrides))
    assert resumed.state.resumed_at and resumed.matrix == reference.matrix
    for name in ("01-codes", "02-yesno"):
        ours = resumed.folder / "adapters" / name / "adapter_model.safetensors"
        theirs = reference.folder / "adapters" / name / "adapter_model.safetensors"
        assert ours.read_bytes() == theirs.read_bytes()
