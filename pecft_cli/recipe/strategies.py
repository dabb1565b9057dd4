"""What each strategy accepts: its options with help on every one, and what it can combine with.

This is the recipe's side of a strategy: checked when a recipe loads, printed by `pecft validate
--explain`, and free of torch, so a wrong option is refused before any model library loads. The
mechanics live in `pecft_cli.strategies`, one module per strategy, under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.recipe.sections import COUNT_LIMIT, Section, StrategySection

PerTask = float | dict[str, float]


class NoOptions(Section):
    """A strategy without options: any key given is unknown."""


class ReplayOptions(Section):
    """How many examples to keep and how much of later stages' training they make up."""

    selection: Literal["balanced", "reservoir"] = Field(
        "balanced",
        description="balanced: the same number kept of every task; reservoir: a uniform sample "
        "of the whole stream, tasks in proportion to their size",
    )
    per_task: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="examples kept of each task (balanced)"
    )
    fraction: float | None = Field(
        None, gt=0, le=1, description="share kept of each task (balanced)"
    )
    size: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="reservoir capacity over all tasks"
    )
    ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="replayed share of a stage's training mix; unset: the whole buffer is added",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> ReplayOptions:
        if self.selection == "reservoir":
            if self.size is None or self.per_task is not None or self.fraction is not None:
                raise ValueError("reservoir replay takes `size` (the buffer capacity) only")
        elif (self.per_task is None) == (self.fraction is None) or self.size is not None:
            raise ValueError(
                "balanced replay (the default selection) takes exactly one of `per_task` or "
                "`fraction`; `size` goes with `selection: reservoir`"
            )
        return self


class OLoraOptions(Section):
    """O-LoRA's two loss weights; each a number, or task names to numbers with `default`."""

    lambda1: PerTask = Field(
        0.5,
        description="weight of the orthogonality loss, sum |A_old A_new^T| over LoRA layers "
        "(the paper uses 0.5; up to 5 on long streams)",
    )
    lambda2: PerTask = Field(
        0.0, description="weight of the new LoRA's size (Frobenius norms of its A and B)"
    )


class InfLoraOptions(Section):
    """How much of the earlier tasks' input subspace each new LoRA must leave alone."""

    threshold_first: float = Field(
        0.95, gt=0, le=1, description="share of input energy protected after the first task"
    )
    threshold_last: float = Field(
        1.0, gt=0, le=1, description="the share it rises to, linearly, by the last task"
    )
    feature_examples: int = Field(
        256, gt=0, le=COUNT_LIMIT, description="training examples per stage that measure inputs"
    )

    @model_validator(mode="after")
    def _rising(self) -> InfLoraOptions:
        if self.threshold_last < self.threshold_first:
            raise ValueError("threshold_last must be at least threshold_first")
        return self


class EwcOptions(Section):
    """EWC's quadratic penalty on moving the LoRA weights that mattered to earlier tasks."""

    weight: float = Field(1000.0, gt=0, description="scale of the penalty")
    fisher_examples: int = Field(
        64, gt=0, le=COUNT_LIMIT, description="examples per task that estimate the Fisher"
    )


class LwfOptions(Section):
    """LwF's distillation from the model as it stood before the task."""

    weight: float = Field(1.0, gt=0, description="scale of the distillation term")
    temperature: float = Field(2.0, gt=0, description="softens both distributions")


@dataclass(frozen=True)
class Traits:
    """A strategy as a recipe sees it: its options and what it combines with."""

    summary: str
    options: type[Section] = NoOptions
    takes_replay: bool = True  # `strategy.replay` may add a replay buffer
    routes: bool = False  # keeps a LoRA per task that a router can choose
    full_precision_only: bool = False  # refuses a 4-bit or 8-bit base
    replays: bool = False  # its own options are replay options
    stage_adapter: Literal["lora", "stack", "full"] = "lora"  # rank r, r*k at stage k, or full
    one_stage: bool = False  # trains every task at once


TRAITS: dict[str, Traits] = {
    "seq": Traits("one LoRA trained through every task in turn: the baseline that forgets"),
    "inclora": Traits(
        "a new LoRA per task, the earlier ones frozen but still active",
        routes=True,
        stage_adapter="stack",
    ),
    "olora": Traits(
        "IncLoRA plus a loss keeping each new LoRA orthogonal to the earlier ones (Wang et al. "
        "2023)",
        OLoraOptions,
        routes=True,
        stage_adapter="stack",
    ),
    "inflora": Traits(
        "each new LoRA's A fixed outside the earlier tasks' input subspace, only B trained "
        "(Liang and Li 2024)",
        InfLoraOptions,
        routes=True,
        stage_adapter="stack",
    ),
    "osf": Traits(
        "orthogonal subspace fine-tuning of the base weights through PEFT's OSF",
        full_precision_only=True,
        stage_adapter="full",
    ),
    "separate": Traits("a LoRA per task, each trained from the base alone", routes=True),
    "chain": Traits("a LoRA per task, each started from the one before", routes=True),
    "replay": Traits(
        "seq with a replay buffer; the options say how much to keep and mix in",
        ReplayOptions,
        takes_replay=False,
        replays=True,
    ),
    "joint": Traits(
        "one LoRA on every task's data at once: the usual upper bound",
        takes_replay=False,
        one_stage=True,
    ),
    "ewc": Traits("one LoRA with EWC's penalty (Kirkpatrick et al. 2017)", EwcOptions),
    "lwf": Traits("one LoRA with LwF's distillation (Li and Hoiem 2016)", LwfOptions),
}


def traits(name: str) -> Traits:
    if name not in TRAITS:
        raise PecftError(
            f"strategy.name: unknown strategy '{name}'"
            f"{did_you_mean(name, list(TRAITS)) or '.'} Available: {', '.join(TRAITS)}."
        )
    return TRAITS[name]


def replay_combines() -> list[str]:
    """The strategies that `strategy.replay` can add a replay buffer to."""
    return [name for name, kind in TRAITS.items() if kind.takes_replay]


def check_strategy(section: StrategySection, tasks: list[str], quantization: str) -> None:
    """Refuse an unknown strategy, option or task name, or a base the strategy cannot train,
    before any work starts."""
    options, _ = strategy_options(section)
    if quantization != "none" and TRAITS[section.name].full_precision_only:
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


def strategy_options(section: StrategySection) -> tuple[Section, ReplayOptions | None]:
    """The strategy's options and the replay options, each validated by its own schema."""
    kind = traits(section.name)
    options = validate("strategy.options", kind.options, section.options)
    own = options if kind.replays else None
    assert own is None or isinstance(own, ReplayOptions)
    if section.routed and not kind.routes:
        routed = ", ".join(name for name, other in TRAITS.items() if other.routes)
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
    if not kind.takes_replay:
        raise PecftError(
            f"strategy.replay: replay does not combine with '{section.name}'; it combines with "
            f"{combines}."
        )
    replay = validate("strategy.replay", ReplayOptions, section.replay)
    assert isinstance(replay, ReplayOptions)
    return options, replay


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


def strategy_label(section: StrategySection) -> str:
    """The strategy as reports name it: `olora+replay` when replay is added to another,
    `+routing` when a router serves each input."""
    replay = "+replay" if section.replay is not None else ""
    return section.name + replay + ("+routing" if section.routed else "")
