"""Continual-learning strategies, one small module each, looked up by the recipe's name."""

from __future__ import annotations

from pydantic import ValidationError

from pecft_cli.errors import PecftError, did_you_mean
from pecft_cli.recipe import LoraSection, Section, StrategySection
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.seq import Sequential

STRATEGIES: dict[str, type[Strategy]] = {"seq": Sequential}


def check_strategy(section: StrategySection) -> None:
    """Refuse an unknown strategy name or option before any work starts."""
    build_options(section)


def build_options(section: StrategySection) -> Section:
    """The strategy's options, validated by the strategy's own schema."""
    if section.name not in STRATEGIES:
        raise PecftError(
            f"strategy.name: unknown strategy '{section.name}'"
            f"{did_you_mean(section.name, list(STRATEGIES)) or '.'} "
            f"Available: {', '.join(STRATEGIES)}."
        )
    options_type = STRATEGIES[section.name].Options
    try:
        return options_type.model_validate(section.options)
    except ValidationError as exc:
        problems = []
        valid = list(options_type.model_fields)
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(key, valid) or "."
                allowed = ", ".join(valid) if valid else "none (this strategy takes no options)"
                problems.append(f"strategy.options.{key}: unknown option{hint} Valid: {allowed}.")
            else:
                problems.append(f"strategy.options.{key}: {err['msg']} (got {err.get('input')!r}).")
        raise PecftError(" ".join(problems)) from None


def build_strategy(section: StrategySection, lora: LoraSection) -> Strategy:
    """The strategy object the task loop calls."""
    return STRATEGIES[section.name](build_options(section), lora)
