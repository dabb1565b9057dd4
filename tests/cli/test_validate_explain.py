"""`pecft validate --explain`: the strategy's summary, its options as set, and the routing mode."""

import json
from pathlib import Path

from conftest import invoke

from pecft_cli.recipe.sections import ROUTING
from pecft_cli.recipe.strategies import TRAITS, OLoraOptions

OLORA = ["--set", "strategy.name=olora", "--set", "strategy.options.lambda1=0.2"]


def test_explain_shows_each_option_with_value_default_type_and_help(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, "--explain", *OLORA)
    assert result.exit_code == 0, result.output
    assert f"strategy olora: {TRAITS['olora'].summary}" in result.output
    assert "lambda1 = 0.2  (default 0.5; number or mapping to number)" in result.output
    assert "lambda2 = 0.0  (default 0.0;" in result.output
    assert OLoraOptions.model_fields["lambda2"].description in result.output
    assert "\n   routing " not in result.output  # no router: no routing mode to explain
    assert result.output.rstrip().endswith("valid")


def test_explain_shows_the_routing_mode_and_the_replay_buffer(recipe_file: Path) -> None:
    routed = ["--set", "strategy.routing=prototype", "--set", "strategy.replay.per_task=2"]
    result = invoke("validate", recipe_file, "--explain", *OLORA, *routed)
    assert result.exit_code == 0, result.output
    assert f"routing prototype: {ROUTING['prototype'][:60]}" in result.output
    assert "strategy.replay:" in result.output
    assert "per_task = 2  (default null; integer or null; > 0" in result.output


def test_explain_shows_arrow_settings_and_a_strategy_without_options(recipe_file: Path) -> None:
    routed = ["--set", "strategy.routing=arrow", "--set", "strategy.arrow.top_k=2"]
    arrow = invoke("validate", recipe_file, "--explain", "--set", "strategy.name=separate", *routed)
    assert arrow.exit_code == 0, arrow.output
    assert "strategy.options: none (this strategy takes none)" in arrow.output
    assert "routing arrow: PEFT's Arrow" in arrow.output
    assert "strategy.arrow.top_k = 2  (default 3; integer;" in arrow.output


def test_without_explain_no_option_is_listed(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, *OLORA)
    assert result.exit_code == 0, result.output
    assert "lambda1" not in result.output


def test_explain_in_json(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, "--explain", "--json", *OLORA)
    assert result.exit_code == 0, result.output
    explained = json.loads(result.stdout)["explain"]
    assert explained["name"] == "olora" and explained["routing_help"] is None
    lambda1 = explained["options"][0]
    assert lambda1["value"] == "0.2"
    assert lambda1["key"]["path"] == "lambda1" and lambda1["key"]["default"] == "0.5"
    assert "orthogonality" in lambda1["key"]["help"]
    assert "explain" not in json.loads(invoke("validate", recipe_file, "--json").stdout)


def test_explain_shows_the_router_settings_of_a_routed_strategy(recipe_file: Path) -> None:
    routed = ["--set", "strategy.routing=gaussian", "--set", "strategy.router.layer=1"]
    result = invoke("validate", recipe_file, "--explain", "--set", "strategy.name=chain", *routed)
    assert result.exit_code == 0, result.output
    assert "routing gaussian: serve each input with the LoRA of the task a Gaussian" in " ".join(
        result.output.split()
    )
    assert "strategy.router.layer = 1  (default null; integer" in result.output
    assert "strategy.router.shrinkage = 0.1" in result.output
