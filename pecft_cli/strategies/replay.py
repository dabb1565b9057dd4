"""Replay on its own: seq with a replay buffer, whose options are the strategy's options.

`strategy: {name: replay, options: {per_task: 30}}` is the same run as
`strategy: {name: seq, replay: {per_task: 30}}`; `pecft_cli.replay_buffer` holds the mechanics.
"""

from __future__ import annotations

from pecft_cli.recipe import Section
from pecft_cli.replay_buffer import ReplayOptions
from pecft_cli.strategies.seq import Sequential


class Replay(Sequential):
    """One LoRA through every task, each stage mixed with kept examples of earlier tasks."""

    Options = ReplayOptions
    takes_replay = False  # it replays already; its options say how

    @classmethod
    def replay_options(cls, options: Section) -> ReplayOptions | None:
        assert isinstance(options, ReplayOptions)
        return options
