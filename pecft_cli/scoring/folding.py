"""Scoring with the active LoRAs folded into the base weights, and the base weights restored.

A LoRA layer in eval mode computes W x + s B A x: two extra small matrix products and an add
per adapted layer at every step. While a model only scores, each plain float LoRA layer gets
W + s B A as a new tensor and PEFT's `merged` flag, so it runs one product; afterwards the
layer gets back the very tensor it had, so training, checkpoints and resumes see the same bits
(PEFT's unmerge subtracts the delta again, which leaves rounding in the base weights). The cost
is a copy of the adapted weights while scoring. 4-bit and 8-bit bases, sharded weights, DoRA
and other LoRA variants, LoRA biases and non-linear LoRA layers stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import Linear as LoraLinear

from pecft_cli.parallel.sharding import is_sharded


def foldable(module: torch.nn.Module) -> bool:
    """A plain float LoRA linear layer with live active adapters and nothing merged."""
    if type(module) is not LoraLinear or module.merged or module.disable_adapters:
        return False
    weight = module.get_base_layer().weight
    if not weight.is_floating_point() or hasattr(weight, "quant_state"):
        return False
    active = [name for name in module.active_adapters if name in module.lora_A]
    return bool(active) and not any(
        module.lora_variant.get(name) or module.lora_bias.get(name) for name in active
    )


@contextmanager
def folded(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block every foldable LoRA layer runs as one folded weight; yields how many."""
    live = enabled and not is_sharded(model)
    layers = [m for m in model.modules() if foldable(m)] if live else []
    saved = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                active = [name for name in layer.active_adapters if name in layer.lora_A]
                delta = sum(layer.get_delta_weight(name) for name in active)
                saved.append((layer, weight.data))
                weight.data = weight.data + delta.to(weight.dtype)
                layer.merged_adapters = active
        yield len(layers)
    finally:
        for layer, original in saved:
            layer.get_base_layer().weight.data = original
            layer.merged_adapters = []
