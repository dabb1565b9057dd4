"""The hooks a continual-learning strategy plugs into the task loop.

The loop in `pecft_cli.training.loop` calls them in this order; the defaults do nothing, so a
strategy module overrides only what it changes and the loop never branches on a strategy's name:

    attach(base)                                   once, before anything trains
    resume(model, finished, state)                 once, only when a stopped run continues
    for stage in stages():
        before_stage(model, stage, examples)       examples: the stage's own, without replay
        extra_loss(model, stage)                   at every step, added to the answer loss
        batch_loss(model, stage, batch)            at every micro-batch, a data term on it
        after_stage(model, stage, examples)
        save_adapter(model, stage, folder)         adapters/NN-<stage>, for stock PEFT
        save_extras(model, stage, run)             anything else, in the run folder
        serve(model, earlier stage or None)        routing only: answer as after that stage
        experts(stage)                             routing only: the task LoRAs Arrow mixes
        state_dict()                               into the checkpoint

Replay is not a strategy hook: any strategy takes a replay buffer (`pecft_cli.data.replay`),
which the loop asks for the examples a stage trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from pecft_cli.data.tasks import Example
from pecft_cli.model.adapters import save_adapter
from pecft_cli.model.loss import AnswerBatch
from pecft_cli.recipe.sections import LoraSection, Section
from pecft_cli.runfolder.layout import RunFolder


@dataclass(frozen=True)
class Stage:
    """What trains at once: its place in the run, its name and the tasks whose data it uses."""

    index: int
    name: str
    tasks: tuple[int, ...]


def lora_config(lora: LoraSection) -> LoraConfig:
    """PEFT's LoRA config from the recipe's lora section."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


class Strategy:
    """Default hooks: one LoRA, trained on each task in turn, saved as is."""

    batch_loss_name: ClassVar[str | None] = None  # the log key of `batch_loss`, when it has one
    shards: ClassVar[bool] = True  # whether it trains with the base model split (FSDP)

    def __init__(self, options: Section, lora: LoraSection, tasks: list[str], seed: int) -> None:
        self.options = options
        self.lora = lora
        self.tasks = tasks
        self.seed = seed
        self.routed = False  # whether a router will serve earlier stages (set by build_strategy)
        self.sharded = False  # whether the base model is split across processes (set by run)

    def stages(self) -> list[Stage]:
        """What trains, in order: by default one stage per task, named after it."""
        return [Stage(index, name, (index,)) for index, name in enumerate(self.tasks)]

    def attach(self, model: PreTrainedModel) -> PeftModel:
        """Wrap the base model with the LoRA adapter(s) this strategy trains."""
        return get_peft_model(model, lora_config(self.lora))

    def resume(self, model: PeftModel, finished: list[Stage], state: dict[str, Any]) -> None:
        """Rebuild what the strategy held after the `finished` stages of a stopped run: the
        adapters it added to the model, and its memory from `state` (what `state_dict`
        returned). Called once, before the checkpoint's LoRA weights are copied in."""
        self.load_state_dict(state)

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        """Called before `stage` trains on `examples` (its own tasks' examples; replayed ones
        are mixed in after this)."""

    def extra_loss(self, model: PeftModel, stage: Stage) -> torch.Tensor | None:
        """A term added to the answer loss at every step of `stage`, or None."""
        return None

    def batch_loss(self, model: PeftModel, stage: Stage, batch: AnswerBatch) -> torch.Tensor | None:
        """A term on this process's share of a micro-batch, summed over its answer tokens (the
        loop divides it by the global batch's answer tokens, as it does the cross-entropy), or
        None. `batch.logits` are the model's, with their graph, at the answer positions."""
        return None

    def after_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        """Called after `stage` trained on `examples`, before its adapter is saved."""

    def serve(self, model: PeftModel, stage: Stage | None) -> None:
        """Routing only: make the model answer as it did right after `stage`, or, with None, as
        it stands after the latest stage (how training left it)."""

    def experts(self, stage: Stage) -> list[str]:
        """Routing only: the PEFT adapter names of the task LoRAs trained up to `stage`, each
        task's own, for a router that mixes them (Arrow)."""
        return []

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        """Write the model after `stage` into `folder` as one adapter that stock PEFT loads."""
        save_adapter(model, folder)

    def save_extras(self, model: PeftModel, stage: Stage, run: RunFolder) -> None:
        """Write what else the strategy keeps in the run folder after `stage`."""

    def state_dict(self) -> dict[str, Any]:
        """What the strategy has learnt of earlier stages (beyond the LoRA weights), for
        resuming: tensors, numbers, strings and lists only, so a checkpoint loads with
        weights_only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
