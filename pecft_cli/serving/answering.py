"""The interface every routing mode implements, and the simplest mode: no routing.

A `Routing` opens a stage's experts (`pecft_cli.serving.experts`) and scores or answers through
them; training's rows, `pecft eval` and `pecft generate` all go through it, so no caller
branches on the mode. `pecft_cli.serving.routing` builds the mode a recipe asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pecft_cli.data.tasks import TaskData
from pecft_cli.parallel.distributed import Share
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.scoring.scorer import TaskScore
from pecft_cli.serving.experts import Experts, stage_alone
from pecft_cli.serving.router import Router

Scorer = Callable[[Any, TaskData], TaskScore]  # (model, task) -> the task's score
Decoder = Callable[[Any, list[list[int]]], dict[int, str]]  # (model, prompts) -> answers


class Routing(Protocol):
    """A routing mode: which experts a stage loads, and how they score and answer."""

    def at(self, trained: int) -> Routing:
        """The mode as it stood once `trained` stages had trained (0: the base row)."""

    def open(self, model: Any, saved: SavedRun, stage: str) -> Experts:
        """A saved run's stage on `model`: the adapters this mode chooses between."""

    def score(self, experts: Experts, task: TaskData, scorer: Scorer) -> TaskScore:
        """One task's score; each prediction routed records `routed_to`."""

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        """Every prompt's answer, and the task whose adapter gave it (None when unrouted)."""

    def learn(self, model: Any, task: str, prompts: list[list[int]], share: Share) -> None:
        """In training, once `task` has trained: what the mode learns of it from its prompts
        (each process its `share`)."""

    def estimate(self) -> float | None:
        """In training: the mode's routing accuracy on training prompts it did not learn from
        (None where it cannot tell)."""

    def kept(self) -> Router | None:
        """What the run folder keeps of the mode (`router/`), if anything."""


@dataclass
class OwnAdapter:
    """The stage's model as it stands; no input is routed."""

    def at(self, trained: int) -> Routing:
        return self

    def open(self, model: Any, saved: SavedRun, stage: str) -> Experts:
        return stage_alone(model, saved, stage)

    def score(self, experts: Experts, task: TaskData, scorer: Scorer) -> TaskScore:
        return scorer(experts.model, task)

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        answers = decode(experts.model, prompts)
        return [answers[i] for i in range(len(prompts))], [None] * len(prompts)

    def learn(self, model: Any, task: str, prompts: list[list[int]], share: Share) -> None:
        """Nothing to learn."""

    def estimate(self) -> float | None:
        return None

    def kept(self) -> Router | None:
        return None
