"""Continual-learning strategies, one small module each, looked up by the recipe's name.

A strategy's options and what it combines with are the recipe's (`pecft_cli.recipe.strategies`,
under the same name); here each name finds the class whose hooks the task loop calls. Nothing
here or in the task loop knows a strategy by name.
"""

from __future__ import annotations

from pecft_cli.data.replay import ReplayBuffer
from pecft_cli.recipe.schema import LoraSection, StrategySection
from pecft_cli.recipe.strategies import strategy_options
from pecft_cli.strategies.base import Strategy
from pecft_cli.strategies.chain import Chain
from pecft_cli.strategies.ewc import Ewc
from pecft_cli.strategies.inclora import IncrementalLora
from pecft_cli.strategies.inflora import InfLora
from pecft_cli.strategies.joint import Joint
from pecft_cli.strategies.lwf import Lwf
from pecft_cli.strategies.olora import OLora
from pecft_cli.strategies.osf import Osf
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
