"""O-LoRA (Wang et al. 2023): IncLoRA plus a loss that keeps each new LoRA orthogonal to the old.

As the reference code computes it, per LoRA layer: orth = sum |A_old @ A_new^T| over the rows of
every earlier task's A (only A matrices), and l2 = ||A_new||_F + ||B_new||_F (not squared).
The loss is CE + lambda1 * sum(orth) + lambda2 * sum(l2); both lambdas may differ per task.
"""

from __future__ import annotations

import torch
from peft import PeftModel

from pecft_cli.recipe.strategies import PerTask
from pecft_cli.strategies.base import Stage
from pecft_cli.strategies.inclora import STACKED
from pecft_cli.strategies.stacked import task_adapter
from pecft_cli.strategies.task_loras import Part, TaskLoras, composed


def per_task(value: PerTask, task: str) -> float:
    if isinstance(value, dict):
        return value.get(task, value.get("default", 0.0))
    return value


def orthogonality(
    model: PeftModel, index: int, folded: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """sum over LoRA layers of sum |A_old @ A_new^T|, the old rows being those of the earlier
    tasks' adapters and, for tasks folded into the weights, their kept rows (`folded`, by
    module); zero for the first task."""
    new = task_adapter(index)
    total = torch.zeros((), device=next(model.parameters()).device)
    if index == 0:
        return total
    for key, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or new not in lora_a:
            continue
        rows = [lora_a[task_adapter(i)].weight for i in range(index) if task_adapter(i) in lora_a]
        if folded and key in folded:
            rows.insert(0, folded[key])
        old = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)  # folded: no copy a step
        total = total + torch.abs(old @ lora_a[new].weight.T).sum()
    return total


def l2_size(model: PeftModel, index: int) -> torch.Tensor:
    """sum over LoRA layers of ||A_new||_F + ||B_new||_F."""
    new = task_adapter(index)
    total = torch.zeros((), device=next(model.parameters()).device)
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or new not in lora_a:
            continue
        total = (
            total + torch.linalg.norm(lora_a[new].weight) + torch.linalg.norm(lora_b[new].weight)
        )
    return total


class Orthogonality(Part):
    """O-LoRA's loss on the new LoRA: lambda1 * orth + lambda2 * l2, per task."""

    def extra_loss(self, loras: TaskLoras, model: PeftModel, stage: Stage) -> torch.Tensor | None:
        index, task = stage.index, stage.name
        lambda1 = per_task(loras.options.lambda1, task)
        lambda2 = per_task(loras.options.lambda2, task)
        loss = None
        if lambda1 and index > 0:
            loss = lambda1 * orthogonality(model, index, loras.folded_a)
        if lambda2:
            size = lambda2 * l2_size(model, index)
            loss = size if loss is None else loss + size
        return loss


build = composed(STACKED, Orthogonality)
