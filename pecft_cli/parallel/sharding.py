"""Sharded training: the frozen base model split across processes with FSDP2 (`fully_shard`).

A launch through Accelerate's FSDP config (cli/accelerate/fsdp.yaml) or `pecft train
--num-processes N --fsdp` asks for it. Every decoder layer and then the whole model become FSDP
units, so each process keeps 1/N of the base weights and gathers a layer's weights only while the
layer runs. The LoRA weights stay whole on every process (FSDP ignores them): they are a tiny
fraction of the model, pecft sums their gradients itself as in data-parallel training, and
strategies, checkpoints and adapter files read them as plain tensors. bitsandbytes stores 4-bit
weights as bytes, which FSDP cannot split, so on a 4-bit base they too stay whole and only the
float weights (embeddings, norms, head) are sharded.

Every forward pass of a sharded model is a collective, so every process runs the same ones:
each scores every evaluation batch (no split), and a process with no examples in a batch runs a
stand-in example whose loss counts zero.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule, fully_shard

from pecft_cli.errors import PecftError
from pecft_cli.model.adapters import is_adapter_weight
from pecft_cli.parallel.launch import FSDP_FLAG, FSDP_VERSION


def requested(accelerator: Accelerator) -> bool:
    """Whether this launch asks for sharding: Accelerate's FSDP type on GPUs, or its FSDP flag
    in the environment on a CPU host (where Accelerate itself stays data-parallel)."""
    flagged = os.environ.get(FSDP_FLAG, "false").lower() == "true"
    fsdp = accelerator.distributed_type == DistributedType.FSDP or flagged
    return fsdp and accelerator.num_processes > 1


def check_request(strategy: str, shards: bool) -> None:
    """Refuse an FSDP launch that pecft cannot shard, before the model is loaded."""
    version = os.environ.get(FSDP_VERSION, "2")
    if version != "2":
        raise PecftError(
            f"this launch asks for FSDP version {version}; pecft shards with FSDP2 only. Set "
            "fsdp_version: 2 in the Accelerate config (cli/accelerate/fsdp.yaml does)."
        )
    if not shards:
        raise PecftError(
            f"strategy.name: '{strategy}' trains the base model's own weight matrices, which "
            "FSDP splits across processes, so it cannot run sharded. Launch it data-parallel "
            "(without --fsdp or the FSDP config), or choose a LoRA strategy: every other "
            "strategy trains sharded."
        )


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """Make every decoder layer and then the whole transformers model an FSDP unit, the LoRA
    (and any 4-bit) weights left whole; everything lands on `device`.

    The root unit is the transformers model inside the PEFT wrapper, so that `generate`, which
    calls that model directly, runs through the same hooks as training does.
    """
    inner = model.get_base_model()
    whole = {
        parameter
        for name, parameter in model.named_parameters()
        if is_adapter_weight(name) or not parameter.is_floating_point()
    }
    layers = set(getattr(inner, "_no_split_modules", None) or [])
    for module in list(inner.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, ignored_params=whole)
    # The root reshards after every forward pass too: a state_dict() on the main process alone
    # (saving an adapter) reshards whatever is gathered, and the processes' next forward passes
    # must gather the same units.
    fully_shard(inner, ignored_params=whole, reshard_after_forward=True)
    for parameter in whole:
        if parameter.device != device and parameter.is_floating_point():
            parameter.data = parameter.data.to(device)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP holds (part of) this model's weights."""
    return any(isinstance(module, FSDPModule) for module in model.modules())


def no_grad(model: torch.nn.Module) -> AbstractContextManager[Any]:
    """Inference mode, except for a sharded model: FSDP keeps the buffers it gathers weights
    into, and training could not write into buffers made in inference mode."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()
