"""PEFT's Arrow as a routing mode: the task LoRAs mixed token by token, training-free."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from peft import ArrowConfig, LoraConfig, PeftModel

from pecft_cli.data.tasks import TaskData
from pecft_cli.parallel.distributed import Share
from pecft_cli.recipe.sections import ArrowSection
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.scoring.scorer import TaskScore
from pecft_cli.serving.answering import Decoder, OwnAdapter, Routing, Scorer
from pecft_cli.serving.experts import Experts, task_loras
from pecft_cli.serving.router import Router

ARROW_ADAPTER = "arrow_router"  # the name PEFT's Arrow layers leave out of the experts


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
            return OwnAdapter().score(experts, task, scorer)

    def answer(
        self, experts: Experts, prompts: list[list[int]], decode: Decoder
    ) -> tuple[list[str], list[str | None]]:
        with self.mixing(experts):
            return OwnAdapter().answer(experts, prompts, decode)

    def learn(self, model: Any, task: str, prompts: list[list[int]], share: Share) -> None:
        """Nothing to learn: Arrow reads the LoRAs themselves."""

    def estimate(self) -> float | None:
        return None

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
