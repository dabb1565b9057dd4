"""`pecft schema`: a valid JSON Schema that accepts every shipped recipe and refuses typos."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import invoke

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import validate_recipe

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    ROOT / "recipes/quickstart.yaml",
    *sorted((ROOT / "recipes/benchmarks").glob("*.yaml")),
    *sorted((ROOT / "bench/recipes").glob("*.yaml")),
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def quickstart() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "recipes/quickstart.yaml").read_text(encoding="utf-8"))


def problems(validator: jsonschema.Draft202012Validator, recipe: dict[str, Any]) -> list[str]:
    return [error.message for error in validator.iter_errors(recipe)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_is_valid(
    validator: jsonschema.Draft202012Validator, path: Path
) -> None:
    assert problems(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_shipped_recipes_are_found() -> None:
    assert len(SHIPPED) >= 5


def test_an_unknown_top_level_key_is_refused(validator: jsonschema.Draft202012Validator) -> None:
    recipe = quickstart() | {"trainig": {"lr": 1e-4}}
    assert any("trainig" in message for message in problems(validator, recipe))


STRATEGIES = [
    ({"name": "olora", "options": {"lambda1": {"default": 0.5}}}, True),
    ({"name": "chain", "routing": "prototype", "replay": {"per_task": 30}}, True),
    ({"name": "replay", "options": {"selection": "reservoir", "size": 40}}, True),
    ({"name": "olora", "options": {"lamda1": 0.5}}, False),
    ({"options": {"lambda1": 0.5}}, False),  # no name: seq, which takes no options
    ({"name": "seqq"}, False),
    ({"name": "seq", "routing": "prototype"}, False),
    ({"name": "joint", "replay": {"per_task": 30}}, False),
]


@pytest.mark.parametrize(("strategy", "valid"), STRATEGIES)
def test_the_schema_and_the_loader_agree_on_strategies(
    validator: jsonschema.Draft202012Validator, strategy: dict[str, Any], valid: bool
) -> None:
    recipe = quickstart() | {"strategy": strategy}
    assert (problems(validator, recipe) == []) is valid
    try:
        validate_recipe(copy.deepcopy(recipe))
    except PecftError:
        assert not valid
    else:
        assert valid


def test_short_forms_the_validators_accept_are_valid(
    validator: jsonschema.Draft202012Validator,
) -> None:
    recipe = copy.deepcopy(quickstart())
    recipe["model"]["quantization"] = "4bit"
    recipe["tasks"][0]["per_class"] = 500
    assert problems(validator, recipe) == []


def test_schema_loads_no_model_library() -> None:
    code = (
        "import sys\n"
        "from pecft_cli.cli.app import app\n"
        "app(['schema'], standalone_mode=False)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')]\n"
        "sys.stderr.write(repr(sorted(heavy)))\n"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stderr.strip() == "[]"
    assert json.loads(done.stdout)["title"] == "pecft recipe"
