"""chain on the tiny model: each task's LoRA starts from the one before, so its snapshots are
seq's models after each task, bit for bit with dropout 0 (the tiny recipe's), and unrouted it
scores exactly as seq does."""

from pathlib import Path

import torch
from conftest import write_recipe
from safetensors.torch import load_file

from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run

STEPS = ["training.max_steps=4"]


def trained(tmp_path: Path, tiny_model: Path, name: str, *overrides: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    recipe = load_recipe(write_recipe(folder, tiny_model), [*STEPS, *overrides])
    return run(recipe).folder


def adapter(run_folder: Path, stage: str) -> list[torch.Tensor]:
    tensors = load_file(run_folder / "adapters" / stage / "adapter_model.safetensors")
    return [tensors[key] for key in sorted(tensors)]


def test_snapshots_are_seqs_models_and_unrouted_it_scores_as_seq(
    tmp_path: Path, tiny_model: Path
) -> None:
    seq = trained(tmp_path, tiny_model, "seq", "strategy.name=seq")
    chain = trained(tmp_path, tiny_model, "chain", "strategy.name=chain")
    routed = trained(
        tmp_path, tiny_model, "routed", "strategy.name=chain", "strategy.routing=prototype"
    )
    for stage in ("01-codes", "02-yesno"):
        for expected, got, served in zip(
            adapter(seq, stage), adapter(chain, stage), adapter(routed, stage), strict=True
        ):
            assert torch.equal(expected, got) and torch.equal(expected, served)
    first, second = adapter(chain, "01-codes"), adapter(chain, "02-yesno")
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert read_matrix(seq / "eval/matrix.csv") == read_matrix(chain / "eval/matrix.csv")
