"""EWC (Kirkpatrick et al. 2017) on the LoRA weights: a regularisation baseline from the survey.

After each task, the diagonal empirical Fisher information of the trainable LoRA weights is
estimated from per-example gradients on a seeded sample of that task; later tasks pay
weight/2 * sum F * (theta - theta_after)^2. Fishers add up over tasks (online EWC), and the
anchor is the weights after the latest task.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from peft import PeftModel

from pecft_cli.data.batch import training_features
from pecft_cli.data.tasks import Example
from pecft_cli.model.loss import answer_loss
from pecft_cli.strategies.base import Stage, Strategy


class Ewc(Strategy):
    """One LoRA, as seq, held near what earlier tasks needed by a Fisher-weighted penalty."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def extra_loss(self, model: PeftModel, stage: Stage) -> torch.Tensor | None:
        if not self.fisher:
            return None
        penalty = torch.zeros((), device=next(model.parameters()).device)
        for name, parameter in model.named_parameters():
            if name in self.fisher:
                penalty = penalty + (self.fisher[name] * (parameter - self.anchor[name]) ** 2).sum()
        return self.options.weight / 2 * penalty

    def after_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        count, seed = self.options.fisher_examples, self.seed + stage.index
        fisher = fisher_diagonal(model, examples, count, seed)
        for name, value in fisher.items():
            self.fisher[name] = self.fisher.get(name, torch.zeros_like(value)) + value
        self.anchor = {
            name: parameter.detach().clone()
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        }

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]


def fisher_diagonal(
    model: PeftModel, examples: list[Example], count: int, seed: int
) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of the answer loss, for every trainable weight."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in trainable.items()}
    sample = random.Random(seed).sample(examples, min(count, len(examples)))
    was_training = model.training
    model.eval()
    for example in sample:
        model.zero_grad(set_to_none=True)
        answer_loss(model, [training_features(example)]).backward()
        for name, parameter in trainable.items():
            if parameter.grad is not None:
                fisher[name] += parameter.grad.detach() ** 2 / len(sample)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher
