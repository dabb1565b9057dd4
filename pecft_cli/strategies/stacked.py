"""A LoRA per task, stacked: the shared mechanics of IncLoRA, O-LoRA and InfLoRA, with PEFT.

Every task gets its own named PEFT adapter. While task k trains, adapters 1..k are all active
(PEFT sums their outputs, each with its own alpha/r scaling) and only adapter k is trainable.
The model after task k is exported as one plain LoRA, the concatenation of the stack: rank
r*k, each task's scaling folded into its B columns, alpha equal to the rank, so stock
`PeftModel.from_pretrained` gives the stack's outputs.

On a float base, unless a router needs earlier stages, a finished task's LoRA is folded into
the base weights before the next task starts and leaves the model (`fold`): the forward pass
then runs one LoRA whatever the number of tasks, and memory stays flat. Its weights are kept on
the CPU for the export and for a resume, which folds them again in the same order, so a resumed
run's weights are the same bits. A quantized base cannot take a fold (its weights are packed
integers), nor can a sharded one (each process holds a part of the weights), so there every
LoRA stays in the forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from pecft_cli.model.adapters import save_adapter, write_lora
from pecft_cli.recipe.sections import LoraSection
from pecft_cli.strategies.base import lora_config

# A task's LoRA as plain CPU tensors, by module name: {"A": r x in, "B": out x r, "scale": s}.
Weights = dict[str, dict[str, Any]]


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
    stack = [task_adapter(i) for i in range(index + 1) if task_adapter(i) in model.peft_config]
    model.set_adapter(name)  # PeftModel's own record of the active adapter, which folds remove
    model.base_model.set_adapter(name if alone else stack)
    for parameter_name, parameter in model.named_parameters():
        if "lora_" in parameter_name:
            parameter.requires_grad = f".{name}." in parameter_name


def lora_modules(model: PeftModel, name: str) -> dict[str, Any]:
    """The LoRA layers that hold adapter `name`, by module name."""
    return {
        key: module
        for key, module in model.named_modules()
        if name in (getattr(module, "lora_A", None) or {})
    }


def own_weights(model: PeftModel, index: int) -> Weights:
    """Task `index`'s LoRA as CPU tensors, with its alpha/r scale."""
    name = task_adapter(index)
    return {
        key: {
            "A": layer.lora_A[name].weight.detach().to("cpu", copy=True),
            "B": layer.lora_B[name].weight.detach().to("cpu", copy=True),
            "scale": float(layer.scaling[name]),
        }
        for key, layer in lora_modules(model, name).items()
    }


def copy_task(model: PeftModel, source: int, target: int) -> None:
    """Set task `target`'s LoRA to task `source`'s weights, layer by layer."""
    name, given = task_adapter(target), task_adapter(source)
    with torch.no_grad():
        for layer in lora_modules(model, name).values():
            layer.lora_A[name].weight.copy_(layer.lora_A[given].weight)
            layer.lora_B[name].weight.copy_(layer.lora_B[given].weight)


def can_fold(model: PeftModel) -> bool:
    """Whether every LoRA layer's base weight is a plain float tensor (not 4-bit or 8-bit)."""
    weights = [m.get_base_layer().weight for m in lora_modules(model, task_adapter(0)).values()]
    return all(w.is_floating_point() and not hasattr(w, "quant_state") for w in weights)


def fold(model: PeftModel, index: int) -> Weights:
    """Add task `index`'s LoRA into the base weights (PEFT's own delta) and remove it from the
    model; returns its weights."""
    kept, name = own_weights(model, index), task_adapter(index)
    with torch.no_grad():
        for layer in lora_modules(model, name).values():
            weight = layer.get_base_layer().weight
            weight += layer.get_delta_weight(name).to(weight.dtype)
    model.delete_adapter(name)
    return kept


def refold(model: PeftModel, index: int, lora: LoraSection, kept: Weights) -> None:
    """Fold a task again from its kept weights, for a resume: the same adapter, the same sum."""
    start_task(model, index, lora)
    name = task_adapter(index)
    with torch.no_grad():
        for key, layer in lora_modules(model, name).items():
            layer.lora_A[name].weight.copy_(kept[key]["A"])
            layer.lora_B[name].weight.copy_(kept[key]["B"])
    fold(model, index)


def save_stack(model: PeftModel, index: int, folder: Path, folded: list[Weights]) -> None:
    """Write the model after task `index` as one plain LoRA: the folded tasks' kept weights and
    the live adapters, concatenated."""
    parts = [*folded, *(own_weights(model, i) for i in range(len(folded), index + 1))]
    tensors = {}
    for key in parts[-1]:
        stem = f"base_model.model.{key.removeprefix('base_model.model.')}"
        tensors[f"{stem}.lora_A.weight"] = torch.cat([p[key]["A"] for p in parts]).contiguous()
        scaled = [p[key]["B"] * p[key]["scale"] for p in parts]
        tensors[f"{stem}.lora_B.weight"] = torch.cat(scaled, dim=1).contiguous()
    rank = sum(next(iter(p.values()))["A"].shape[0] for p in parts)
    live = model.peft_config[task_adapter(index)]
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted({key.rsplit(".", 1)[-1] for key in parts[-1]}),
        bias="none",
        task_type="CAUSAL_LM",
    )
    config.base_model_name_or_path = live.base_model_name_or_path
    write_lora(folder, config, tensors)


def save_own(model: PeftModel, index: int, folder: Path) -> None:
    """Write task `index`'s own LoRA alone (for merging), as a stock PEFT adapter."""
    save_adapter(model, folder, task_adapter(index))
