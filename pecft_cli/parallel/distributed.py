"""Several processes as one: the process group's checks, sums and main-process-only actions.

pecft trains data-parallel: every process holds the whole base model (or, sharded, its part
of it: `pecft_cli.parallel.sharding`), each trains on its share of every global batch and scores
its share of every evaluation, and the results are summed or gathered so they equal what one process
computes. With one process every helper here is a no-op that returns its input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object

from pecft_cli.errors import PecftError

T = TypeVar("T")


def process_group() -> Accelerator:
    """This process's place among the launched ones (on the GPU when there is one), checked
    so that processes launched together really work together."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_processes(accelerator)
    return accelerator


def device() -> torch.device:
    """The device of a single-process command: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_processes(accelerator: Accelerator) -> None:
    """Refuse processes that were launched together but did not form one group: each would
    repeat the whole run on its own."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise PecftError(
            "this launch asks for DeepSpeed; pecft trains data-parallel, or sharded through "
            "FSDP2. Launch with the DDP config (cli/accelerate/ddp.yaml) or `pecft train "
            "--num-processes N`, or sharded with cli/accelerate/fsdp.yaml or `pecft train "
            "--num-processes N --fsdp`."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise PecftError(
            f"this process was launched as one of {launched}, but they did not join one process "
            f"group (it sees {accelerator.num_processes}), so each would repeat the whole run. "
            "Launch with `pecft train --num-processes N`, or with torchrun or `accelerate "
            "launch --multi_gpu` (on a host without GPUs, with ACCELERATE_USE_CPU=1)."
        )


def on_main(accelerator: Accelerator, action: Callable[[], T]) -> T:
    """Run `action` on the main process only and hand its result, or its error, to every one."""
    outcome: tuple[str, Any] = ("ok", None)
    if accelerator.is_main_process:
        try:
            outcome = ("ok", action())
        except PecftError as exc:
            outcome = ("error", str(exc))
            if accelerator.num_processes == 1:
                raise
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list([outcome])[0]
    if outcome[0] == "error":
        raise PecftError(outcome[1])
    return outcome[1]


def reduce_sum(accelerator: Accelerator, value: float) -> float:
    """A number summed over all processes (itself, with one process)."""
    if accelerator.num_processes == 1:
        return value
    total = accelerator.reduce(torch.tensor(float(value), device=accelerator.device), "sum")
    return float(total)


def sum_gradients(accelerator: Accelerator, parameters: list[torch.nn.Parameter]) -> None:
    """Add up every process's gradients in one flat all-reduce."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), "sum")
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter).clone()
        offset += count


def gather(accelerator: Accelerator, value: T) -> list[T]:
    """Every process's `value`, in rank order."""
    return gather_object([value]) if accelerator.num_processes > 1 else [value]


def cuda_devices(accelerator: Accelerator) -> list[torch.device]:
    """The devices whose generators `fork_rng` must save and restore besides the CPU's."""
    return [accelerator.device] if accelerator.device.type == "cuda" else []


@dataclass(frozen=True)
class Share:
    """This process's part of a list that every process splits (every `world`-th item from its
    `rank`), and how a tensor is summed over the processes."""

    rank: int = 0
    world: int = 1
    accelerator: Accelerator | None = None

    def mine(self, items: list[T]) -> list[T]:
        return items[self.rank :: self.world]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over every process (itself, with one process)."""
        if self.accelerator is None or self.world == 1:
            return tensor
        total = self.accelerator.reduce(tensor.to(self.accelerator.device), "sum")
        return total.to(tensor.device)


def share_of(accelerator: Accelerator) -> Share:
    return Share(accelerator.process_index, accelerator.num_processes, accelerator)
