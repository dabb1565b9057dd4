"""A router as a routing mode: each input to the adapter of the task it picks (prototype or
gaussian, `pecft_cli.serving.router`), from the input's features alone.

Every routed prediction records the task it went to and the router's confidence in it. With
`strategy.router.fallback: latest`, an input whose confidence is below `confident` goes to the
latest stage's task instead. In training the mode also keeps, per task, the features of
`holdout` training prompts, and `estimate` routes them with a copy of the router whose
statistics leave them out: an estimate of its routing accuracy that needs no eval data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pecft_cli.data.tasks import TaskData
from pecft_cli.parallel.distributed import Share
from pecft_cli.recipe.sections import RouterSection
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.scoring.scorer import TaskScore, combine
from pecft_cli.serving.answering import Decoder, OwnAdapter, Routing, Scorer
from pecft_cli.serving.experts import Experts, stage_adapters
from pecft_cli.serving.features import features, settled
from pecft_cli.serving.router import Router, Totals, route

ROUTER_EXAMPLES = 256  # training prompts a task's statistics come from, at most


@dataclass
class RouterRouting:
    """A router, its rules, and (in training) what `estimate` needs."""

    router: Router
    pad_id: int
    settings: RouterSection
    seed: int = 0
    cache: dict[str, torch.Tensor] = field(default_factory=dict)  # eval prompts' features
    learnt: dict[str, Totals] = field(default_factory=dict)  # each task's sums
    heldout: dict[str, torch.Tensor] = field(default_factory=dict)  # held-out features

    def at(self, trained: int) -> Routing:
        if trained == 0:
            return OwnAdapter()
        return replace(self, router=self.router.upto(trained))

    def open(self, model: Any, saved: SavedRun, stage: str) -> Experts:
        return stage_adapters(model, saved, stage)

    def vectors(self, model: Any, prompts: list[list[int]], key: str | None) -> torch.Tensor:
        """The prompts' features; `key` caches a task's eval prompts', which never change: the
        base model computes them."""
        if key is not None and key in self.cache:
            return self.cache[key]
        found = features(model, prompts, self.pad_id, self.router.features)
        if key is not None:
            self.cache[key] = found
        return found

    def routes(
        self, model: Any, prompts: list[list[int]], key: str | None = None
    ) -> tuple[list[str], list[float]]:
        """The task each prompt goes to, and the router's confidence in its own pick."""
        picks, confidence = route(self.router, self.vectors(model, prompts, key))
        names = [self.router.tasks[i] for i in picks]
        if self.settings.fallback == "latest":
            latest, bar = self.router.tasks[-1], self.settings.confident
            names = [n if c >= bar else latest for n, c in zip(names, confidence, strict=True)]
        return names, confidence

    def score(self, experts: Experts, task: TaskData, scorer: Scorer) -> TaskScore:
        prompts = [example.prompt_ids for example in task.eval]
        routes, confidence = self.routes(experts.model, prompts, task.name)
        sure = {example.row: c for example, c in zip(task.eval, confidence, strict=True)}
        parts = []
        try:
            for target in sorted(set(routes)):
                subset = [e for e, to in zip(task.eval, routes, strict=True) if to == target]
                experts.use(target)
                part = scorer(experts.model, replace(task, eval=subset))
                for prediction in part.predictions:
                    prediction["routed_to"] = target
                    prediction["routing_confidence"] = round(sure[prediction["row"]], 6)
                parts.append(part)
        finally:
            experts.restore()
        return combine(parts)

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        routes, _ = self.routes(experts.model, prompts)
        answers = [""] * len(prompts)
        for target in sorted(set(routes)):
            chosen = [i for i, route_ in enumerate(routes) if route_ == target]
            experts.use(target)
            part = decode(experts.model, [prompts[i] for i in chosen])
            for j, i in enumerate(chosen):
                answers[i] = part[j]
        experts.restore()
        return answers, list(routes)

    def learn(self, model: Any, task: str, prompts: list[list[int]], share: Share) -> None:
        """Add the task's statistics from at most ROUTER_EXAMPLES of its training prompts, each
        process its share, summed; keep the features of `holdout` of them for `estimate`."""
        used = prompts[:ROUTER_EXAMPLES]
        if not self.router.tasks:
            self.router.features = settled(self.spec, model, used)
        mine = self.router.totals(features(model, share.mine(used), self.pad_id, self.spec))
        count = share.sum(torch.tensor(mine.count, dtype=torch.float64)).item()
        squares = None if mine.squares is None else share.sum(mine.squares)
        totals = Totals(count, share.sum(mine.total), squares)
        self.router.add(task, totals)
        self.learnt[task] = totals
        held = min(self.settings.holdout, len(used) - 1)
        if held > 0:
            chosen = sorted(random.Random(f"{self.seed}:{task}").sample(range(len(used)), held))
            picked = [used[i] for i in chosen]
            self.heldout[task] = features(model, picked, self.pad_id, self.spec)

    @property
    def spec(self) -> Any:
        return self.router.features

    def estimate(self) -> float | None:
        """The routing accuracy on the held-out training prompts of the tasks trained so far,
        by a copy of the router whose statistics leave them out; None before two tasks."""
        tasks = [task for task in self.router.tasks if task in self.heldout]
        if len(tasks) < 2:
            return None
        blind = self.router.upto(0)
        for task in tasks:
            blind.add(task, self.learnt[task].minus(self.router.totals(self.heldout[task])))
        hits = total = 0
        for index, task in enumerate(tasks):
            picks, _ = route(blind, self.heldout[task])
            hits += sum(pick == index for pick in picks)
            total += len(picks)
        return hits / total

    def kept(self) -> Router | None:
        return self.router
