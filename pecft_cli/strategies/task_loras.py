"""A LoRA per task: the shared part of IncLoRA, O-LoRA, InfLoRA, separate and chain.

Each task trains a LoRA of its own (`stacked.task_adapter`). A `Layout` says how those LoRAs
relate: stacked (the earlier ones frozen but active, so the model after task k is the sum of
LoRAs 1..k, exported as one plain LoRA) or alone (each trains and answers by itself), and whether
a new LoRA starts from zero or from the previous task's. A method adds its own `Part`s: a loss
(O-LoRA's orthogonality), a way to set the new LoRA before training (InfLoRA's subspace). So a
method is a layout and some parts, composed in its own module; none inherits from another.

Stacked, unrouted, on a float base that is not sharded, each finished LoRA is folded into the
base weights before the next task (see `stacked`), so the forward pass runs one LoRA however
many tasks came before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from pecft_cli.data.tasks import Example
from pecft_cli.model.adapters import save_adapter
from pecft_cli.recipe.sections import LoraSection, Section
from pecft_cli.runfolder.atomic import write_folder
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.strategies import stacked
from pecft_cli.strategies.base import Stage, Strategy


@dataclass(frozen=True)
class Layout:
    """How the per-task LoRAs relate."""

    alone: bool = False  # each task's LoRA trains and answers without the earlier ones
    from_previous: bool = False  # a new task's LoRA starts as a copy of the one before


class Part:
    """What a method adds to the per-task LoRAs; the defaults do nothing. `loras` is the
    strategy the part belongs to (its folded tasks, its seed and options)."""

    def before_stage(
        self, loras: TaskLoras, model: PeftModel, stage: Stage, examples: list[Example]
    ) -> None:
        """Once the stage's new LoRA is in place, before it trains."""

    def after_stage(
        self, loras: TaskLoras, model: PeftModel, stage: Stage, examples: list[Example]
    ) -> None:
        """Once the stage has trained."""

    def extra_loss(self, loras: TaskLoras, model: PeftModel, stage: Stage) -> torch.Tensor | None:
        """A term added to the loss of every optimizer step."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the part has learnt, for resuming (tensors, numbers, strings, lists)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class TaskLoras(Strategy):
    """A LoRA per task in the given layout, plus the method's parts."""

    def __init__(
        self,
        options: Section,
        lora: LoraSection,
        tasks: list[str],
        seed: int,
        *,
        layout: Layout,
        parts: tuple[Part, ...] = (),
    ) -> None:
        super().__init__(options, lora, tasks, seed)
        self.layout = layout
        self.parts = parts
        self.latest = 0
        self.folds = False  # set by attach: fold finished LoRAs into the weights
        self.folded: list[stacked.Weights] = []  # their weights, in task order
        self.folded_a: dict[str, torch.Tensor] = {}  # their A rows, on the device, by module

    def attach(self, model: PreTrainedModel) -> PeftModel:
        peft_model = stacked.attach_stack(model, self.lora)
        folds = not self.routed and not self.layout.alone and not self.sharded
        self.folds = folds and stacked.can_fold(peft_model)
        return peft_model

    def resume(self, model: PeftModel, finished: list[Stage], state: dict[str, Any]) -> None:
        """Fold the folded tasks again, from their kept weights, and add back the LoRA of every
        other finished task; the checkpoint then fills their weights."""
        self.load_state_dict(state)
        kept, self.folded = self.folded, []
        for stage in finished:
            if stage.index < len(kept):
                stacked.refold(model, stage.index, self.lora, kept[stage.index])
                self.remember(model, kept[stage.index])
            else:
                stacked.start_task(model, stage.index, self.lora, self.layout.alone)
            self.latest = stage.index

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        previous = stacked.task_adapter(stage.index - 1)
        if self.folds and stage.index > 0 and previous in model.peft_config:
            self.remember(model, stacked.fold(model, stage.index - 1))
        stacked.start_task(model, stage.index, self.lora, self.layout.alone)
        if self.layout.from_previous and stage.index > 0:
            stacked.copy_task(model, stage.index - 1, stage.index)
        self.latest = stage.index
        for part in self.parts:
            part.before_stage(self, model, stage, examples)

    def extra_loss(self, model: PeftModel, stage: Stage) -> torch.Tensor | None:
        terms = [part.extra_loss(self, model, stage) for part in self.parts]
        present = [term for term in terms if term is not None]
        return sum(present[1:], present[0]) if present else None

    def after_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        for part in self.parts:
            part.after_stage(self, model, stage, examples)

    def remember(self, model: PeftModel, kept: stacked.Weights) -> None:
        """Keep a folded task's weights, and its A rows on the device for losses that need
        them (O-LoRA's)."""
        self.folded.append(kept)
        device = next(model.parameters()).device
        for key, weights in kept.items():
            rows = weights["A"].to(device)
            earlier = self.folded_a.get(key)
            self.folded_a[key] = rows if earlier is None else torch.cat([earlier, rows])

    def serve(self, model: PeftModel, stage: Stage | None) -> None:
        """The model as it was right after `stage` (its LoRA alone, or the stack up to it);
        None restores the latest stage's setup."""
        if stage is None:
            stacked.start_task(model, self.latest, self.lora, self.layout.alone)
        elif self.layout.alone:
            model.base_model.set_adapter(stacked.task_adapter(stage.index))
        else:
            model.base_model.set_adapter([stacked.task_adapter(i) for i in range(stage.index + 1)])

    def experts(self, stage: Stage) -> list[str]:
        return [stacked.task_adapter(i) for i in range(stage.index + 1)]

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        if self.layout.alone:
            save_adapter(model, folder, stacked.task_adapter(stage.index))
        else:
            stacked.save_stack(model, stage.index, folder, self.folded)

    def save_extras(self, model: PeftModel, stage: Stage, run: RunFolder) -> None:
        """Each task's own LoRA too, in task_loras/<NN>-<task>/, for merging and Arrow."""
        own = run.task_lora(stage.index, stage.name)
        write_folder(own, partial(stacked.save_own, model, stage.index))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"folded": self.folded}
        for part in self.parts:
            state |= part.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.folded = list(state.get("folded", []))
        for part in self.parts:
            part.load_state_dict(state)


def composed(layout: Layout, *parts: type[Part]) -> Callable[..., TaskLoras]:
    """A strategy factory for the registry: per-task LoRAs in `layout` with fresh `parts`."""

    def build(options: Section, lora: LoraSection, tasks: list[str], seed: int) -> TaskLoras:
        made = tuple(part() for part in parts)
        return TaskLoras(options, lora, tasks, seed, layout=layout, parts=made)

    return build
