"""IncLoRA: a new LoRA per task, the earlier ones frozen but still active; no extra loss.

Unrouted on a float base that is not sharded, each finished LoRA is folded into the base weights
before the next task (see `stacked`), so the forward pass runs one LoRA however many tasks came
before."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from pecft_cli.data.tasks import Example
from pecft_cli.runfolder.atomic import write_folder
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.strategies import stacked
from pecft_cli.strategies.base import Stage, Strategy


class IncrementalLora(Strategy):
    """Each task trains its own LoRA on top of the frozen stack of the earlier ones."""

    alone: ClassVar[bool] = False  # whether a task's LoRA trains and serves without the earlier

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latest = 0
        self.folds = False  # set by attach: fold finished LoRAs into the weights
        self.folded: list[stacked.Weights] = []  # their weights, in task order
        self.folded_a: dict[str, torch.Tensor] = {}  # their A rows, on the device, by module

    def attach(self, model: PreTrainedModel) -> PeftModel:
        peft_model = stacked.attach_stack(model, self.lora)
        folds = not self.routed and not self.alone and not self.sharded
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
                stacked.start_task(model, stage.index, self.lora, self.alone)
            self.latest = stage.index

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        previous = stacked.task_adapter(stage.index - 1)
        if self.folds and stage.index > 0 and previous in model.peft_config:
            self.remember(model, stacked.fold(model, stage.index - 1))
        stacked.start_task(model, stage.index, self.lora, self.alone)
        self.latest = stage.index

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
        """The stack of tasks up to `stage` active; None restores the latest stage's setup."""
        if stage is None:
            stacked.start_task(model, self.latest, self.lora, self.alone)
        else:
            model.base_model.set_adapter([stacked.task_adapter(i) for i in range(stage.index + 1)])

    def experts(self, stage: Stage) -> list[str]:
        return [stacked.task_adapter(i) for i in range(stage.index + 1)]

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        stacked.save_stack(model, stage.index, folder, self.folded)

    def save_extras(self, model: PeftModel, stage: Stage, run: RunFolder) -> None:
        """Each task's own LoRA too, in task_loras/<NN>-<task>/, for merging."""
        own = run.task_lora(stage.index, stage.name)
        write_folder(own, partial(stacked.save_own, model, stage.index))

    def state_dict(self) -> dict[str, Any]:
        return {"folded": self.folded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.folded = list(state.get("folded", []))
