"""The hooks a continual-learning strategy plugs into the task loop.

The loop in `pecft_cli.train` calls these in order for every task; the defaults do nothing, so a
strategy module overrides only what it changes and the loop never branches on strategy names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from pecft_cli.data import Example
from pecft_cli.recipe import LoraSection, Section


class NoOptions(Section):
    """A strategy without options: any key given is unknown."""


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
    """Default hooks: one LoRA, trained on each task's own examples, saved as is."""

    Options: ClassVar[type[Section]] = NoOptions

    def __init__(self, options: Section, lora: LoraSection, tasks: list[str], seed: int) -> None:
        self.options = options
        self.lora = lora
        self.tasks = tasks
        self.seed = seed

    def stages(self, tasks: list[str]) -> list[tuple[str, list[int]]]:
        """What trains, in order: each stage's name and the tasks whose data it trains on."""
        return [(name, [index]) for index, name in enumerate(tasks)]

    def attach(self, model: PreTrainedModel) -> PeftModel:
        """Wrap the base model with the LoRA adapter(s) this strategy trains."""
        return get_peft_model(model, lora_config(self.lora))

    def before_task(self, model: PeftModel, index: int) -> None:
        """Called before training task `index` (0-based)."""

    def train_examples(self, index: int, examples: list[Example]) -> list[Example]:
        """The examples task `index` trains on; replay mixes earlier tasks in here."""
        return examples

    def extra_loss(self, model: PeftModel, index: int) -> torch.Tensor | None:
        """A term added to the cross-entropy loss at every step of task `index`, or None."""
        return None

    def after_task(self, model: PeftModel, index: int, examples: list[Example]) -> None:
        """Called after training task `index`, before its adapter is saved."""

    def save_adapter(self, model: PeftModel, index: int, folder: Path) -> None:
        """Write the model after task `index` as one adapter that stock PEFT loads."""
        model.save_pretrained(str(folder))

    def save_extras(self, model: PeftModel, index: int, root: Path) -> None:
        """Write what else the strategy keeps in the run folder after task `index`."""

    def state_dict(self) -> dict[str, Any]:
        """What the strategy has learnt of earlier tasks (beyond the LoRA weights), for resuming:
        tensors, numbers, strings and lists only, so a checkpoint loads with weights_only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
