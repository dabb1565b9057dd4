"""IncLoRA: a new LoRA per task, the earlier ones frozen but still active; no extra loss."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel

from pecft_cli import runs
from pecft_cli.strategies import stacked
from pecft_cli.strategies.base import Strategy


class IncrementalLora(Strategy):
    """Each task trains its own LoRA on top of the frozen stack of the earlier ones."""

    def attach(self, model: PreTrainedModel) -> PeftModel:
        return stacked.attach_stack(model, self.lora)

    def before_task(self, model: PeftModel, index: int) -> None:
        stacked.start_task(model, index, self.lora)

    def save_adapter(self, model: PeftModel, index: int, folder: Path) -> None:
        stacked.save_stack(model, index, folder)

    def save_extras(self, model: PeftModel, index: int, root: Path) -> None:
        """Each task's own LoRA too, in task_loras/<NN>-<task>/, for merging."""
        own = runs.RunFolder(root).task_lora(index, self.tasks[index])
        runs.write_folder(own, partial(stacked.save_own, model, index))
