"""Continual-learning strategies, one small module each, looked up by the recipe's name.

A strategy's options and what it combines with belong to the recipe
(`pecft_cli.recipe.strategies`, under the same name); here each name finds what builds the
object whose hooks (`pecft_cli.strategies.base`) the task loop calls. Nothing here or in the
task loop knows a strategy by name.

Adding a strategy:

1. Write `pecft_cli/strategies/<name>.py`: its docstring says what it does, with the paper and
   the formula it computes. A method with one shared LoRA subclasses `Strategy` and overrides
   only the hooks it changes (see `ewc.py`); a method with a LoRA per task composes
   `task_loras.composed(Layout(...), *parts)` from a layout and its own `Part`s (see
   `olora.py`). No strategy inherits from another strategy.
2. Add its `Traits` to `TRAITS` in `pecft_cli/recipe/strategies.py`: a one-line summary, its
   options class (a `Section` with a `description=` on every field), and whether it routes,
   takes replay or needs a full-precision base.
3. Add one line to `STRATEGIES` below.
4. Make `state_dict` return everything it learnt beyond the LoRA weights, so a stopped run
   resumes exactly; `tests/training/test_checkpoint.py` runs every strategy through a kill and a
   resume and compares bit for bit: add it there, and a test of its own under
   `tests/strategies/`.
5. Regenerate the recipe reference (`docs/recipe.md`) and add its row to the strategy table in
   `docs/strategies.md`.
"""

from __future__ import annotations

from collections.abc import Callable

from pecft_cli.data.replay import ReplayBuffer
from pecft_cli.recipe.sections import LoraSection, Section, StrategySection
from pecft_cli.recipe.strategies import strategy_options
from pecft_cli.strategies import chain, inclora, inflora, olora, separate
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.ewc import Ewc
from pecft_cli.strategies.joint import Joint
from pecft_cli.strategies.lwf import Lwf
from pecft_cli.strategies.osf import Osf
from pecft_cli.strategies.seq import Sequential

Build = Callable[[Section, LoraSection, list[str], int], Strategy]

STRATEGIES: dict[str, Build] = {
    "seq": Sequential,
    "inclora": inclora.build,
    "olora": olora.build,
    "inflora": inflora.build,
    "osf": Osf,
    "separate": separate.build,
    "chain": chain.build,
    "replay": Sequential,  # with the replay buffer its options describe
    "joint": Joint,
    "ewc": Ewc,
    "lwf": Lwf,
}


def build_strategy(
    section: StrategySection, lora: LoraSection, tasks: list[str], seed: int
) -> tuple[Strategy, ReplayBuffer | None]:
    """The strategy object the task loop calls, and the replay buffer it mixes with, if any."""
    options, replay = strategy_options(section)
    strategy = STRATEGIES[section.name](options, lora, tasks, seed)
    strategy.routed = section.routed
    return strategy, None if replay is None else ReplayBuffer(replay, seed)
