"""How the base model is loaded: the dtype that `auto` picks on each kind of device."""

from pathlib import Path

import pytest
import torch

from pecft_cli.model.load import model_dtype
from pecft_cli.recipe.load import load_recipe
from pecft_cli.training.loop import run


@pytest.mark.parametrize(
    ("device", "bf16", "expected"),
    [
        ("cpu", True, torch.float32),
        ("cuda", True, torch.bfloat16),
        ("cuda:1", False, torch.float32),
    ],
)
def test_auto_is_bfloat16_only_on_a_gpu_that_has_it(
    device: str, bf16: bool, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert model_dtype("auto", device) == expected


def test_an_explicit_dtype_is_kept() -> None:
    assert model_dtype("float16", "cpu") == torch.float16


def test_the_run_records_the_dtype_it_trained_in(recipe_file: Path) -> None:
    result = run(load_recipe(recipe_file, ["training.max_steps=1", "model.dtype=auto"]))
    assert result.state.dtype == "float32"
