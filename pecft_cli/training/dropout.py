"""LoRA dropout whose masks depend on the example, not on the process that computes it.

PEFT draws each LoRA layer's dropout mask from the process's random generator, so the same
example gets another mask when a global batch is split between two processes instead of one, and
the run's result depends on the number of processes. Here every example of a micro-batch carries
a key made from the stage's seed, the step, the micro-batch and the example's position in the
global batch; a layer's mask for that example is drawn from a generator seeded with the example's
key and the layer's name. Any number of processes, and a recomputation under gradient
checkpointing, draws the same masks.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

MASK64 = 2**64 - 1


def mix(*numbers: int) -> int:
    """One 63-bit seed from several integers (splitmix64 steps): nearby inputs, unrelated seeds."""
    state = 0
    for number in numbers:
        state = (state + number + 0x9E3779B97F4A7C15) & MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & MASK64
        state ^= state >> 31
    return state >> 1


def name_key(name: str) -> int:
    """A layer name's key, the same in every process (Python's own hash is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


class DropoutPlan:
    """The examples of the forward and backward pass about to run, in the batch's layout: one
    packed row of sequences end to end, or one padded row per sequence."""

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.lengths: list[int] = []
        self.packed = True

    @contextlib.contextmanager
    def examples(self, keys: list[int], lengths: list[int], packed: bool) -> Iterator[None]:
        """Masks follow these examples until the block ends; outside it, plain dropout."""
        self.keys, self.lengths, self.packed = keys, lengths, packed
        try:
            yield
        finally:
            self.keys, self.lengths = [], []

    def mask(self, x: torch.Tensor, p: float, layer: int) -> torch.Tensor | None:
        """The scaled keep-mask for input `x` of a layer, or None when `x` is not the planned
        batch (another forward pass, such as a strategy's own)."""
        if not self.keys:
            return None
        width = x.shape[-1]
        if self.packed:
            if tuple(x.shape[:-1]) != (1, sum(self.lengths)):
                return None
            rows = [
                self.draw(key, n, width, p, layer, x)
                for key, n in zip(self.keys, self.lengths, strict=True)
            ]
            return torch.cat(rows).unsqueeze(0)
        if x.dim() != 3 or x.shape[0] != len(self.keys) or x.shape[1] < max(self.lengths):
            return None
        ones = torch.ones((), dtype=x.dtype, device=x.device)
        rows = [
            torch.cat([self.draw(key, n, width, p, layer, x), ones.expand(x.shape[1] - n, width)])
            for key, n in zip(self.keys, self.lengths, strict=True)
        ]
        return torch.stack(rows)

    @staticmethod
    def draw(
        key: int, length: int, width: int, p: float, layer: int, x: torch.Tensor
    ) -> torch.Tensor:
        """One example's mask for one layer: kept entries scaled by 1/(1-p), dropped ones 0."""
        generator = torch.Generator(device=x.device).manual_seed(mix(key, layer))
        keep = torch.rand((length, width), generator=generator, device=x.device) >= p
        return keep.to(x.dtype) / (1.0 - p)


class SeededDropout(nn.Module):
    """Dropout drawing its masks from a plan; plain dropout where the plan does not apply."""

    def __init__(self, p: float, plan: DropoutPlan, layer: int) -> None:
        super().__init__()
        self.p, self.plan, self.layer = p, plan, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = self.plan.mask(x, self.p, self.layer)
        if mask is None:
            return nn.functional.dropout(x, self.p, training=True)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, seeded per example"


def install(model: nn.Module, plan: DropoutPlan) -> int:
    """Put seeded dropout in place of every LoRA dropout layer the model has (adapters added
    since the last call included); returns how many layers draw from the plan."""
    count = 0
    for name, module in model.named_modules():
        layers = getattr(module, "lora_dropout", None)
        if not isinstance(layers, nn.ModuleDict):
            continue
        for adapter, layer in layers.items():
            if isinstance(layer, nn.Dropout):
                layers[adapter] = SeededDropout(layer.p, plan, name_key(f"{name}/{adapter}"))
            if isinstance(layers[adapter], SeededDropout):
                layers[adapter].plan = plan
                count += 1
    return count


def example_keys(seed: int, step: int, micro: int, positions: list[int]) -> list[int]:
    """The keys of a micro-batch's examples, from their positions in the global batch."""
    return [mix(seed, step, micro, position) for position in positions]
