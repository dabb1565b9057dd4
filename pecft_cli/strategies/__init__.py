"""Continual-learning strategies, one small module each, looked up by the recipe's name.

A strategy's `Options` schema checks `strategy.options`; `strategy.replay` adds a replay buffer
to any strategy that `takes_replay`. Nothing here or in the task loop knows a strategy by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.recipe import LoraSection, Section, StrategySection
from pecft_cli.replay_buffer import ReplayBuffer, ReplayOptions
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.chain import Chain
from pecft_cli.strategies.ewc import Ewc
from pecft_cli.strategies.inclora import IncrementalLora
from pecft_cli.strategies.inflora import InfLora
from pecft_cli.strategies.joint import Joint
from pecft_cli.strategies.lwf import Lwf
from pecft_cli.strategies.olora import OLora
from pecft_cli.strategies.osf import Osf
from pecft_cli.strategies.replay import Replay
from pecft_cli.strategies.separate import Separate
from pecft_cli.strategies.seq import Sequential

STRATEGIES: dict[str, type[Strategy]] = {
    "seq": Sequential,
    "inclora": IncrementalLora,
    "olora": OLora,
    "inflora": InfLora,
    "osf": Osf,
    "separate": Separate,
    "chain": Chain,
    "replay": Replay,
    "joint": Joint,
    "ewc": Ewc,
    "lwf": Lwf,
}


def replay_combines() -> list[str]:
    """The strategies that `strategy.replay` can add a replay buffer to."""
    return [name for name, strategy in STRATEGIES.items() if strategy.takes_replay]


def check_strategy(section: StrategySection, tasks: list[str], quantization: str) -> None:
    """Refuse an unknown strategy, option or task name, or a base the strategy cannot train,
    before any work starts."""
    options, _ = build_options(section)
    if quantization != "none" and STRATEGIES[section.name].full_precision_only:
        raise PecftError(
            f"strategy.name: '{section.name}' trains the base model's own weight matrices, and "
            f"PEFT wraps only plain (unquantized) linear layers for it, so it cannot train a "
            f"{quantization} base. Set model.quantization to none, or choose a LoRA strategy "
            "(every other strategy trains on a quantized base)."
        )
    for key, value in options:
        if isinstance(value, dict):
            for task in value:
                if task != "default" and task not in tasks:
                    raise PecftError(
                        f"strategy.options.{key}: '{task}' is not a task of this recipe"
                        f"{did_you_mean(task, tasks) or '.'} Use task names or 'default'."
                    )


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise PecftError(
            f"strategy.name: unknown strategy '{name}'"
            f"{did_you_mean(name, list(STRATEGIES)) or '.'} Available: {', '.join(STRATEGIES)}."
        )
    return STRATEGIES[name]


def build_options(section: StrategySection) -> tuple[Section, ReplayOptions | None]:
    """The strategy's options and the replay options, each validated by its own schema."""
    strategy = strategy_class(section.name)
    options = validate("strategy.options", strategy.Options, section.options)
    own = strategy.replay_options(options)
    if section.routing != "none" and not strategy.routes:
        routed = ", ".join(name for name, kind in STRATEGIES.items() if kind.routes)
        raise PecftError(
            f"strategy.routing: '{section.name}' trains one LoRA for every task, so there is "
            f"nothing to route between; routing works with a LoRA per task: {routed}."
        )
    if section.replay is None:
        return options, own
    combines = ", ".join(replay_combines())
    if own is not None:
        raise PecftError(
            f"strategy.replay: with name '{section.name}' the replay options go in "
            f"strategy.options; use strategy.replay to add replay to {combines}."
        )
    if not strategy.takes_replay:
        raise PecftError(
            f"strategy.replay: replay does not combine with '{section.name}'; it combines with "
            f"{combines}."
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
) -> tuple[Strategy, ReplayBuffer | None]:
    """The strategy object the task loop calls, and the replay buffer it mixes with, if any."""
    options, replay = build_options(section)
    strategy = STRATEGIES[section.name](options, lora, tasks, seed)
    strategy.routed = section.routing != "none"
    return strategy, None if replay is None else ReplayBuffer(replay, seed)


def strategy_label(section: StrategySection) -> str:
    """The strategy as reports name it: `olora+replay` when replay is added to another,
    `+routing` when a router serves each input."""
    replay = "+replay" if section.replay is not None else ""
    return section.name + replay + ("+routing" if section.routing != "none" else "")
