"""How a stage answers: the one place that turns a run's routing mode into scores and answers.

Three modes, one interface (`Routing`): `OwnAdapter` (the stage's model as it stands: every
strategy, and every base row), `PrototypeRouting` (each input goes to the adapter of the task
whose prototype is nearest, `pecft_cli.serving.router`) and `ArrowRouting` (PEFT's Arrow mixes
the task LoRAs token by token). Training's rows, `pecft eval` and `pecft generate` all ask a
`Routing` for a stage's experts and then score or answer through it, so no caller branches on
the mode; `routing_for` reads the recipe's `strategy.routing` and is the only code that does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from peft import ArrowConfig, LoraConfig, PeftModel

from pecft_cli.data.tasks import TaskData
from pecft_cli.recipe.sections import ArrowSection, StrategySection
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.scoring.scorer import TaskScore, combine
from pecft_cli.serving.experts import Experts, stage_adapters, stage_alone, task_loras
from pecft_cli.serving.router import PROTOTYPE_EXAMPLES, Router, embed, saved_router

ARROW_ADAPTER = "arrow_router"  # the name PEFT's Arrow layers leave out of the experts

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

    def learn(self, model: Any, task: str, prompts: list[list[int]]) -> None:
        """In training, once `task` has trained: what the mode learns of it from its prompts."""

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

    def learn(self, model: Any, task: str, prompts: list[list[int]]) -> None:
        """Nothing to learn."""

    def kept(self) -> Router | None:
        return None


@dataclass
class PrototypeRouting:
    """Each input to the adapter of the task whose prototype its embedding is nearest."""

    router: Router
    pad_id: int
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # eval prompts, by task

    def at(self, trained: int) -> Routing:
        if trained == 0:
            return OwnAdapter()
        return PrototypeRouting(self.router.upto(trained), self.pad_id, self.vectors)

    def open(self, model: Any, saved: SavedRun, stage: str) -> Experts:
        return stage_adapters(model, saved, stage)

    def routes(self, model: Any, prompts: list[list[int]], key: str | None = None) -> list[str]:
        """The task each prompt goes to; `key` caches the embeddings of a task's eval prompts,
        which never change: the base model computes them."""
        if key is None or key not in self.vectors:
            vectors = embed(model, prompts, self.pad_id)
            if key is None:
                return [self.router.tasks[i] for i in self.router.route(vectors)]
            self.vectors[key] = vectors
        return [self.router.tasks[i] for i in self.router.route(self.vectors[key])]

    def score(self, experts: Experts, task: TaskData, scorer: Scorer) -> TaskScore:
        routes = self.routes(experts.model, [e.prompt_ids for e in task.eval], task.name)
        parts = []
        try:
            for target in sorted(set(routes)):
                subset = [e for e, route in zip(task.eval, routes, strict=True) if route == target]
                experts.use(target)
                part = scorer(experts.model, replace(task, eval=subset))
                for prediction in part.predictions:
                    prediction["routed_to"] = target
                parts.append(part)
        finally:
            experts.restore()
        return combine(parts)

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        routes = self.routes(experts.model, prompts)
        answers = [""] * len(prompts)
        for target in sorted(set(routes)):
            chosen = [i for i, route in enumerate(routes) if route == target]
            experts.use(target)
            part = decode(experts.model, [prompts[i] for i in chosen])
            for j, i in enumerate(chosen):
                answers[i] = part[j]
        experts.restore()
        return answers, list(routes)

    def learn(self, model: Any, task: str, prompts: list[list[int]]) -> None:
        """The task's prototype, from at most PROTOTYPE_EXAMPLES of its training prompts."""
        self.router.add(task, embed(model, prompts[:PROTOTYPE_EXAMPLES], self.pad_id))

    def kept(self) -> Router | None:
        return self.router


@dataclass
class ArrowRouting:
    """PEFT's Arrow over the task LoRAs: training-free, so it keeps nothing."""

    arrow: ArrowSection
    seed: int

    def at(self, trained: int) -> Routing:
        return OwnAdapter() if trained == 0 else self

    def open(self, model: Any, saved: SavedRun, stage: str) -> Experts:
        return task_loras(model, saved, stage)

    def score(self, experts: Experts, task: TaskData, scorer: Scorer) -> TaskScore:
        with self.mixing(experts):
            return scorer(experts.model, task)

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        with self.mixing(experts):
            answers = decode(experts.model, prompts)
        return [answers[i] for i in range(len(prompts))], [None] * len(prompts)

    def learn(self, model: Any, task: str, prompts: list[list[int]]) -> None:
        """Nothing to learn: Arrow reads the LoRAs themselves."""

    def kept(self) -> Router | None:
        return None

    @contextlib.contextmanager
    def mixing(self, experts: Experts) -> Iterator[None]:
        """While the block runs, the model answers through PEFT's Arrow router over the task
        LoRAs: each token's input is compared with each LoRA's prototype (the top right
        singular vector of its B A, seeded power iteration) and the top-k LoRAs are mixed by a
        softmax of those similarities; afterwards the stage answers as before."""
        model: PeftModel = experts.model
        names = experts.mixed()
        first = model.peft_config[names[0]]
        mixing = ArrowConfig(
            top_k=min(self.arrow.top_k, len(names)),
            router_temperature=self.arrow.temperature,
            rng_seed=self.seed,
        )
        mixing.task_adapter_names, mixing.gks_adapter_names = list(names), []  # as PEFT does
        config = LoraConfig(r=first.r, target_modules=first.target_modules, arrow_config=mixing)
        model.add_adapter(ARROW_ADAPTER, config)
        model.base_model.set_adapter(ARROW_ADAPTER)
        try:
            yield
        finally:
            model.delete_adapter(ARROW_ADAPTER)
            experts.restore()


def routing_for(section: StrategySection, seed: int, pad_id: int) -> Routing:
    """A new run's routing mode, from its recipe; a prototype router starts empty."""
    modes: dict[str, Callable[[], Routing]] = {
        "none": OwnAdapter,
        "prototype": lambda: PrototypeRouting(Router(), pad_id),
        "arrow": lambda: ArrowRouting(section.arrow, seed),
    }
    return modes[section.routing]()


def saved_routing(saved: SavedRun, pad_id: int) -> Routing:
    """A saved run's routing mode, with the router it saved (checked against its adapters)."""
    recipe = saved.recipe
    routing = routing_for(recipe.strategy, recipe.seed, pad_id)
    if isinstance(routing, PrototypeRouting):
        routing.router = saved_router(saved)
    return routing


def routed_share(task: str, result: TaskScore, known: list[str]) -> tuple[int, int]:
    """Of a task's predictions, how many went to its own task, and how many were routed; none
    count while the router does not know the task yet."""
    routed = [p["routed_to"] for p in result.predictions if "routed_to" in p]
    if task not in known:
        return 0, 0
    return sum(route == task for route in routed), len(routed)
