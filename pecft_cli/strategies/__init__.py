"""Continual-learning strategies, one small module each, looked up by the recipe's name."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.recipe import LoraSection, Section, StrategySection
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.ewc import Ewc
from pecft_cli.strategies.inclora import IncrementalLora
from pecft_cli.strategies.joint import Joint
from pecft_cli.strategies.olora import OLora
from pecft_cli.strategies.replay import Replay, ReplayOptions
from pecft_cli.strategies.seq import Sequential

STRATEGIES: dict[str, type[Strategy]] = {
    "seq": Sequential,
    "inclora": IncrementalLora,
    "olora": OLora,
    "replay": Sequential,
    "joint": Joint,
    "ewc": Ewc,
}
REPLAY_COMBINES = ("seq", "inclora", "olora", "ewc")


def check_strategy(section: StrategySection, tasks: list[str]) -> None:
    """Refuse an unknown strategy, option or task name before any work starts."""
    options, replay = build_options(section)
    for key, value in options:
        if isinstance(value, dict):
            for task in value:
                if task != "default" and task not in tasks:
                    raise PecftError(
                        f"strategy.options.{key}: '{task}' is not a task of this recipe"
                        f"{did_you_mean(task, tasks) or '.'} Use task names or 'default'."
                    )


def build_options(section: StrategySection) -> tuple[Section, ReplayOptions | None]:
    """The strategy's options and the replay options, each validated by its own schema."""
    if section.name not in STRATEGIES:
        raise PecftError(
            f"strategy.name: unknown strategy '{section.name}'"
            f"{did_you_mean(section.name, list(STRATEGIES)) or '.'} "
            f"Available: {', '.join(STRATEGIES)}."
        )
    if section.name == "replay":
        if section.replay is not None:
            raise PecftError(
                "strategy.replay: with name 'replay' the replay options go in strategy.options; "
                "use strategy.replay to add replay to seq, inclora or olora."
            )
        return Sequential.Options(), validate("strategy.options", ReplayOptions, section.options)
    options = validate("strategy.options", STRATEGIES[section.name].Options, section.options)
    if section.replay is None:
        return options, None
    if section.name not in REPLAY_COMBINES:
        raise PecftError(
            f"strategy.replay: replay does not combine with '{section.name}'; it combines with "
            f"{', '.join(REPLAY_COMBINES)}."
        )
    return options, validate("strategy.replay", ReplayOptions, section.replay)


def validate(where: str, schema: type[Section], given: dict[str, Any]) -> Section:
    """Options through their schema, with errors that name the key and what is valid."""
    try:
        return schema.model_validate(given)
    except ValidationError as exc:
        problems = []
        valid = list(schema.model_fields)
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("float", "dict")))
            at = f"{where}.{key}" if key else where
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(key, valid) or "."
                allowed = ", ".join(valid) if valid else "none (this strategy takes no options)"
                problems.append(f"{at}: unknown option{hint} Valid: {allowed}.")
            else:
                message = err["msg"].removeprefix("Value error, ")
                problems.append(f"{at}: {message} (got {short(err.get('input'))}).")
        raise PecftError(" ".join(list(dict.fromkeys(problems))[:5])) from None


def build_strategy(
    section: StrategySection, lora: LoraSection, tasks: list[str], seed: int
) -> Strategy:
    """The strategy object the task loop calls, wrapped in replay when the recipe asks."""
    options, replay = build_options(section)
    strategy = STRATEGIES[section.name](options, lora, tasks, seed)
    return strategy if replay is None else Replay(strategy, replay)


def strategy_label(section: StrategySection) -> str:
    """The strategy as reports name it: `olora+replay` when replay is added to another."""
    return section.name + ("+replay" if section.replay is not None else "")
