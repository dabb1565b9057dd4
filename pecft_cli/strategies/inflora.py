"""InfLoRA (Liang and Li 2024): each new LoRA's A fixed in a subspace that leaves earlier tasks'
inputs alone; only B trains.

Per LoRA layer the strategy keeps M, an orthonormal basis of the inputs that earlier tasks fed
that layer. Before a stage it measures C, the sum of x x^T over the inputs x the layer sees on the
stage's own training examples (the model as it stands, with every earlier LoRA active), and sets
the new LoRA's A to the top-r left singular vectors of (I - M M^T) C, scaled by 1/sqrt(3) as the
reference code does. For an input in the span of M, A x = 0: the new LoRA adds nothing to what
earlier tasks computed there. After the stage, C is measured again and M grows by GPM's rule:
the leading directions of (I - M M^T) C are added until the share of C's energy (squared singular
values, C taken as the representation matrix as the reference code does) that M captures reaches
the threshold, which rises linearly from `threshold_first` at the first task towards
`threshold_last`. M keeps at least r directions free, so a later task always has room.

The LoRAs stack as in IncLoRA (all active, summed), so the model after task k is exported as one
plain LoRA that stock PEFT loads, and a router can serve each task's stack.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel

from pecft_cli.data.tasks import Example
from pecft_cli.strategies.base import Stage
from pecft_cli.strategies.inclora import STACKED
from pecft_cli.strategies.stacked import lora_modules, task_adapter
from pecft_cli.strategies.task_loras import Part, TaskLoras, composed

COVARIANCE_BATCH = 16
A_SCALE = 1 / math.sqrt(3)
PAD = 0  # any token id: padded positions are masked in attention and never recorded


@contextmanager
def recording(layers: dict[str, torch.nn.Module]) -> Iterator[tuple[dict, list]]:
    """Sum x x^T of every layer's inputs while the block runs; the caller puts each batch's
    attention mask in the list, so padding is left out."""
    sums: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0][mask[0].bool()].float()
            product = x.T @ x
            sums[name] = sums[name] + product if name in sums else product

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        yield sums, mask
    finally:
        for handle in handles:
            handle.remove()


def input_covariance(
    model: PeftModel, layers: dict[str, torch.nn.Module], examples: list[Example]
) -> dict[str, torch.Tensor]:
    """C = sum of x x^T over the tokens of `examples` (prompt and answer), per layer, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with recording(layers) as (sums, mask), torch.no_grad():
            for start in range(0, len(examples), COVARIANCE_BATCH):
                batch = examples[start : start + COVARIANCE_BATCH]
                chunk = [e.prompt_ids + e.target_ids for e in batch]
                width = max(len(row) for row in chunk)
                ids = [row + [PAD] * (width - len(row)) for row in chunk]
                attention = [[1] * len(row) + [0] * (width - len(row)) for row in chunk]
                mask[:] = [torch.tensor(attention, device=device)]
                model(
                    input_ids=torch.tensor(ids, device=device),
                    attention_mask=mask[0],
                    use_cache=False,
                    logits_to_keep=1,
                )
    finally:
        model.train(was_training)
    return {name: value.cpu() for name, value in sums.items()}


def outside(basis: torch.Tensor | None, matrix: torch.Tensor) -> torch.Tensor:
    """(I - M M^T) matrix: the part of its columns that the basis does not span."""
    return matrix if basis is None else matrix - basis @ (basis.T @ matrix)


def grow_basis(
    basis: torch.Tensor | None, covariance: torch.Tensor, threshold: float, room: int
) -> torch.Tensor:
    """GPM's update: add the leading new directions of `covariance` until the basis holds
    `threshold` of its energy; never more than `room` directions in all."""
    energy = torch.linalg.svdvals(covariance).square().sum()
    u, s, _ = torch.linalg.svd(outside(basis, covariance), full_matrices=False)
    captured = 1 - s.square().sum() / energy
    ratios = s.square() / energy
    added = 0
    while added < len(ratios) and captured < threshold:
        captured += ratios[added]
        added += 1
    kept = 0 if basis is None else basis.shape[1]
    added = max(0, min(added, room - kept))
    if basis is None:
        return u[:, : max(added, 1)]
    return torch.cat([basis, u[:, :added]], dim=1)


class InputSubspace(Part):
    """InfLoRA's part: each new A set outside the earlier tasks' input subspace, only B
    trained; the subspace grows after every stage."""

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] = {}
        self.measured: list[Example] = []  # the stage's own examples that measure its inputs

    def before_stage(
        self, loras: TaskLoras, model: PeftModel, stage: Stage, examples: list[Example]
    ) -> None:
        """Set the stage's new A orthogonal to the earlier tasks' inputs, and freeze it."""
        count = min(loras.options.feature_examples, len(examples))
        self.measured = random.Random(loras.seed + stage.index).sample(examples, count)
        name = task_adapter(stage.index)
        layers = lora_modules(model, name)
        covariance = input_covariance(model, layers, self.measured)
        with torch.no_grad():
            for key, module in layers.items():
                u, _, _ = torch.linalg.svd(outside(self.bases.get(key), covariance[key]))
                weight = module.lora_A[name].weight
                weight.copy_(u[:, : weight.shape[0]].T.to(weight) * A_SCALE)
                weight.requires_grad = False

    def after_stage(
        self, loras: TaskLoras, model: PeftModel, stage: Stage, examples: list[Example]
    ) -> None:
        """Grow every layer's basis by the directions the stage's inputs take, as trained."""
        name = task_adapter(stage.index)
        layers = lora_modules(model, name)
        covariance = input_covariance(model, layers, self.measured)
        first, last = loras.options.threshold_first, loras.options.threshold_last
        threshold = first + (last - first) * stage.index / len(loras.tasks)
        for key, module in layers.items():
            rank = module.lora_A[name].weight.shape[0]
            room = covariance[key].shape[0] - rank
            self.bases[key] = grow_basis(self.bases.get(key), covariance[key], threshold, room)

    def state_dict(self) -> dict[str, Any]:
        return {"bases": self.bases}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bases = dict(state.get("bases", {}))


build = composed(STACKED, InputSubspace)
