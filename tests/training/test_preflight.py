"""Checks before a run writes anything: ranges that depend on the model, and a memory estimate
that refuses what cannot fit."""

from pathlib import Path

import pytest
from conftest import invoke, snapshot

from pecft_cli.errors import PecftError
from pecft_cli.model.load import load_tokenizer
from pecft_cli.recipe.load import load_recipe
from pecft_cli.training import preflight


def test_the_estimate_counts_weights_lora_state_and_activations(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)
    memory = preflight.preflight(recipe, load_tokenizer(recipe.model)).memory
    lora = 2 * 4 * (32 + 32) + 2 * 4 * (
        32 + 16
    )  # r=4 on q_proj (32->32), v_proj (32->16), 2 layers
    assert memory.lora == lora * preflight.ADAM_BYTES
    assert memory.weights > 0 and memory.activations > 0
    wider = load_recipe(recipe_file, ["training.batch_size=8"])
    assert preflight.preflight(wider, load_tokenizer(wider.model)).memory.activations > (
        memory.activations
    )


def test_a_recipe_that_cannot_fit_is_refused_with_the_estimate(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "capacity", lambda device: (2**10, "of RAM"))
    before = snapshot(recipe_file.parent)
    result = invoke("train", recipe_file)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "this recipe cannot fit in memory: at least" in message
    assert "of 1.0 KiB of RAM" in message and "gradient_checkpointing" in message
    assert snapshot(recipe_file.parent) == before


def test_two_processes_on_one_host_share_its_memory(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_recipe(recipe_file)
    tokenizer = load_tokenizer(recipe.model)
    need = preflight.preflight(recipe, tokenizer).memory.total
    monkeypatch.setattr(preflight, "capacity", lambda device: (int(need * 1.5), "of RAM"))
    preflight.preflight(recipe, tokenizer, processes=1)
    with pytest.raises(PecftError, match=r"\(2 processes share it\)"):
        preflight.preflight(recipe, tokenizer, processes=2)


def test_validate_shows_the_estimate(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file)
    assert result.exit_code == 0, result.output
    assert "memory: at least" in result.output and "of RAM" in result.output
