"""Property tests: the metrics of any matrix agree with a literal reading of their formulas, and
`--set` overrides of numbers land typed in the recipe or are refused."""

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.scoring.metrics import continual_metrics

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def matrices(draw):
    size = draw(st.integers(min_value=1, max_value=6))
    rows = [draw(st.lists(scores, min_size=size, max_size=size)) for _ in range(size)]
    base = draw(st.lists(scores, min_size=size, max_size=size))
    return rows, base


@given(matrices())
def test_metrics_follow_their_formulas(drawn) -> None:
    rows, base = drawn
    size = len(rows)
    tasks = [f"t{j}" for j in range(size)]
    metrics = continual_metrics(tasks, rows, base)
    final = rows[size - 1]
    assert math.isclose(metrics["acc"], sum(final) / size, abs_tol=1e-12)
    assert math.isclose(
        metrics["learning_accuracy"], sum(rows[j][j] for j in range(size)) / size, abs_tol=1e-12
    )
    if size == 1:
        assert metrics["bwt"] is None and metrics["fwt"] is None and metrics["forgetting"] is None
        return
    bwt = sum(final[j] - rows[j][j] for j in range(size - 1)) / (size - 1)
    fwt = sum(rows[j - 1][j] - base[j] for j in range(1, size)) / (size - 1)
    forgetting = sum(
        max(rows[i][j] for i in range(size - 1)) - final[j] for j in range(size - 1)
    ) / (size - 1)
    assert math.isclose(metrics["bwt"], bwt, abs_tol=1e-12)
    assert math.isclose(metrics["fwt"], fwt, abs_tol=1e-12)
    assert math.isclose(metrics["forgetting"], forgetting, abs_tol=1e-12)
    assert 0 <= metrics["acc"] <= 1 and -1 <= metrics["bwt"] <= 1
    assert metrics["forgetting"] >= -metrics["bwt"] - 1e-12  # the max includes R[j][j]


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "d.jsonl").write_text('{"q": "a", "a": "b"}\n')
    recipe = {
        "name": "p",
        "model": {"path": "some/model"},
        "tasks": [
            {"name": "t", "train": "d.jsonl", "eval": "d.jsonl", "prompt": "{q}", "target": "a"}
        ],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_integer_overrides_land_typed_or_are_refused(recipe_path: Path, value: int) -> None:
    override = f"training.batch_size={value}"
    if value > 0:
        assert load_recipe(recipe_path, [override]).training.batch_size == value
    else:
        with pytest.raises(PecftError, match="training.batch_size"):
            load_recipe(recipe_path, [override])


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-9, max_value=10.0, allow_nan=False))
def test_float_overrides_round_trip(recipe_path: Path, value: float) -> None:
    assert load_recipe(recipe_path, [f"training.lr={value!r}"]).training.lr == value


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="abcxyz_", min_size=1, max_size=8))
def test_unknown_keys_are_refused_with_their_path(recipe_path: Path, key: str) -> None:
    known = {"epochs", "max_steps", "batch_size", "grad_accum", "lr", "scheduler"}
    if key in known:
        return
    with pytest.raises(PecftError, match=f"training.{key}"):
        load_recipe(recipe_path, [f"training.{key}=1"])
