"""IncLoRA: a new LoRA per task, the earlier ones frozen but still active; no extra loss."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from peft import PeftModel
from transformers import PreTrainedModel

from pecft_cli import runs
from pecft_cli.data import Example
from pecft_cli.strategies import stacked
from pecft_cli.strategies.base import Stage, Strategy


class IncrementalLora(Strategy):
    """Each task trains its own LoRA on top of the frozen stack of the earlier ones."""

    routes = True  # the stack after task j is the model after task j, whatever came later
    alone: ClassVar[bool] = False  # whether a task's LoRA trains and serves without the earlier

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latest = 0

    def attach(self, model: PreTrainedModel) -> PeftModel:
        return stacked.attach_stack(model, self.lora)

    def resume(self, model: PeftModel, finished: list[Stage], state: dict[str, Any]) -> None:
        """Add back the LoRA of every finished task; the checkpoint then fills their weights."""
        for stage in finished:
            stacked.start_task(model, stage.index, self.lora, self.alone)
            self.latest = stage.index
        self.load_state_dict(state)

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        stacked.start_task(model, stage.index, self.lora, self.alone)
        self.latest = stage.index

    def serve(self, model: PeftModel, stage: Stage | None) -> None:
        """The stack of tasks up to `stage` active; None restores the latest stage's setup."""
        if stage is None:
            stacked.start_task(model, self.latest, self.lora, self.alone)
        else:
            model.base_model.set_adapter([stacked.task_adapter(i) for i in range(stage.index + 1)])

    def experts(self, stage: Stage) -> list[str]:
        return [stacked.task_adapter(i) for i in range(stage.index + 1)]

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        stacked.save_stack(model, stage.index, folder)

    def save_extras(self, model: PeftModel, stage: Stage, run: runs.RunFolder) -> None:
        """Each task's own LoRA too, in task_loras/<NN>-<task>/, for merging."""
        own = run.task_lora(stage.index, stage.name)
        runs.write_folder(own, partial(stacked.save_own, model, stage.index))
