"""The strategy registry: every name the recipe knows builds a strategy, by composition."""

import inspect

import pytest

from pecft_cli import strategies
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.recipe.strategies import TRAITS, strategy_options
from pecft_cli.strategies import STRATEGIES, build_strategy
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.task_loras import TaskLoras


def test_the_recipe_and_the_registry_know_the_same_strategies() -> None:
    assert list(STRATEGIES) == list(TRAITS)


def test_no_strategy_inherits_from_another() -> None:
    classes = {
        obj
        for module in vars(strategies).values()
        if inspect.ismodule(module) and module.__name__.startswith("pecft_cli.strategies.")
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Strategy) and obj is not Strategy
    }
    assert classes, "no strategy classes found"
    deep = [cls.__name__ for cls in classes if cls.__bases__ != (Strategy,)]
    assert not deep, deep


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_every_strategy_builds_and_says_whether_it_keeps_a_lora_per_task(name: str) -> None:
    options = {"per_task": 2} if TRAITS[name].replays else {}
    section = StrategySection(name=name, options=options)
    strategy, replay = build_strategy(section, LoraSection(), ["a", "b"], seed=0)
    assert isinstance(strategy, TaskLoras) == TRAITS[name].routes
    assert (replay is not None) == TRAITS[name].replays
    assert strategy_options(section)[0] == strategy.options


def test_every_option_of_every_strategy_has_help() -> None:
    missing = [
        f"{name}.{key}"
        for name, kind in TRAITS.items()
        for key, field in kind.options.model_fields.items()
        if not field.description
    ]
    assert not missing, missing
