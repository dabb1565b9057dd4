"""A LoRA per task, stacked: the shared mechanics of IncLoRA and O-LoRA, done with PEFT.

Every task gets its own named PEFT adapter. While task k trains, adapters 1..k are all active
(PEFT sums their outputs, each with its own alpha/r scaling) and only adapter k is trainable.
The model after task k is exported as one plain LoRA with PEFT's exact `cat` combination: rank
r*k, each task's scaling folded into its B columns, so stock `PeftModel.from_pretrained` gives
the same outputs as the stack.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from pecft_cli.adapters import save_adapter
from pecft_cli.recipe import LoraSection
from pecft_cli.strategies.base import lora_config

EXPORT = "stacked"


def task_adapter(index: int) -> str:
    """The PEFT adapter name of task `index` (0-based)."""
    return f"task{index + 1:02d}"


def attach_stack(model: PreTrainedModel, lora: LoraSection) -> PeftModel:
    """The base model with the first task's LoRA; later tasks add theirs in `start_task`."""
    return get_peft_model(model, lora_config(lora), adapter_name=task_adapter(0))


def start_task(model: PeftModel, index: int, lora: LoraSection, alone: bool = False) -> None:
    """Add task `index`'s LoRA, activate it with every earlier one (or `alone`), train only the
    new one."""
    name = task_adapter(index)
    if name not in model.peft_config:
        model.add_adapter(name, lora_config(lora))
    model.base_model.set_adapter(name if alone else [task_adapter(i) for i in range(index + 1)])
    for parameter_name, parameter in model.named_parameters():
        if "lora_" in parameter_name:
            parameter.requires_grad = f".{name}." in parameter_name


def save_stack(model: PeftModel, index: int, folder: Path) -> None:
    """Write the model after task `index` as one plain LoRA (the exact `cat` of the stack)."""
    names = [task_adapter(i) for i in range(index + 1)]
    active = list(model.base_model.active_adapters)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.add_weighted_adapter(names, [1.0] * len(names), EXPORT, combination_type="cat")
    try:
        save_adapter(model, folder, EXPORT)
    finally:
        model.delete_adapter(EXPORT)
        model.base_model.set_adapter(active)
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad = parameter_name in trainable


def save_own(model: PeftModel, index: int, folder: Path) -> None:
    """Write task `index`'s own LoRA alone (for merging), as a stock PEFT adapter."""
    save_adapter(model, folder, task_adapter(index))
