"""Everything checked before a run writes anything: data, LoRA targets, what the recipe asks of
its model and of the machine.

The recipe's schema checks each number's type and sign; what a number may be often depends on the
model: a LoRA rank beyond a layer's size adds parameters and no rank, a sequence past the context
length fails or degrades, and a batch can need more memory than the machine has. These checks read
the model's config and a meta-device skeleton (no weights), and the tokenized data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pecft_cli.data.render import RenderedTask
from pecft_cli.data.tasks import TaskData, load_task
from pecft_cli.errors import PecftError
from pecft_cli.model.load import check_lora_targets, context_length, model_dtype, model_skeleton
from pecft_cli.parallel import distributed
from pecft_cli.recipe.schema import Recipe
from pecft_cli.training.disk import DiskEstimate, check_disk, size

ADAM_BYTES = 16  # a float32 trainable weight, its gradient and AdamW's two moments


@dataclass
class Preflight:
    """A recipe's tasks, read and checked, and the memory and disk its training needs at least."""

    tasks: list[TaskData]
    memory: MemoryEstimate
    disk: DiskEstimate


def preflight(
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    processes: int = 1,
    trust_remote_code: bool = False,
    rendered: dict[str, RenderedTask] | None = None,
) -> Preflight:
    """Read and check every task's data and every model-dependent range of the recipe.

    `rendered` holds the tasks `render_local` already read, which are not read again."""
    skeleton = model_skeleton(recipe.model, trust_remote_code)
    check_lora_targets(recipe.lora, skeleton)
    context = context_length(skeleton.config)
    given = rendered or {}
    tasks = [
        load_task(task, recipe, tokenizer, rendered=given.get(task.name), context=context)
        for task in recipe.tasks
    ]
    memory = check_limits(recipe, skeleton, tasks, processes)
    return Preflight(tasks, memory, check_disk(recipe, lora_layers(recipe, skeleton)))


def lora_layers(recipe: Recipe, skeleton: PreTrainedModel) -> dict[str, torch.nn.Linear]:
    """The linear layers LoRA attaches to, by qualified name, as PEFT chooses them."""
    targets = recipe.lora.target_modules
    output = skeleton.get_output_embeddings()
    return {
        name: module
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (
            module is not output
            if targets == "all-linear"
            else any(name == t or name.endswith("." + t) for t in targets)
        )
    }


def check_rank(recipe: Recipe, layers: dict[str, torch.nn.Linear]) -> None:
    """A rank above a layer's smaller side adds parameters but no expressive power."""
    if not layers:
        return
    name, layer = min(layers.items(), key=lambda item: min(item[1].weight.shape))
    smaller = min(layer.in_features, layer.out_features)
    if recipe.lora.r > smaller:
        raise PecftError(
            f"lora.r: {recipe.lora.r} is more than the layer '{name}' can use: it maps "
            f"{layer.in_features} to {layer.out_features} features, so no update to it has a "
            f"rank above {smaller}. Set lora.r to at most {smaller}."
        )


def check_lengths(recipe: Recipe, tasks: list[TaskData], context: int | None) -> None:
    """Training sequences and eval prompts with their answers must fit the model's context."""
    if context is None:
        return
    for task in recipe.tasks:
        max_length = recipe.task_training(task).max_length
        if max_length > context:
            raise PecftError(
                f"training.max_length: {max_length} (task '{task.name}') is past the model's "
                f"context length of {context} tokens; set it to at most {context}."
            )
    budget = recipe.evaluation.max_new_tokens
    for task in tasks:
        for example in task.eval:
            answer = max((len(c) for c in example.choice_ids or []), default=budget)
            if len(example.prompt_ids) + answer > context:
                raise PecftError(
                    f"tasks '{task.name}' eval, row {example.row}: the prompt's "
                    f"{len(example.prompt_ids)} tokens and {answer} answer tokens "
                    f"(evaluation.max_new_tokens or the longest choice) go past the model's "
                    f"context length of {context}; shorten the prompt or max_new_tokens."
                )


@dataclass
class MemoryEstimate:
    """A lower bound of one process's training memory, in bytes, and what the device has."""

    weights: int
    lora: int
    activations: int
    capacity: int
    device: str

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations

    def describe(self) -> str:
        return (
            f"at least {size(self.total)} per process (weights {size(self.weights)}, LoRA "
            f"training state {size(self.lora)}, activations of one micro-batch "
            f"{size(self.activations)}) of {size(self.capacity)} {self.device}"
        )


def estimate_memory(
    recipe: Recipe,
    skeleton: PreTrainedModel,
    layers: dict[str, torch.nn.Linear],
    tasks: list[TaskData],
    processes: int,
) -> MemoryEstimate:
    """Weights at their stored size, LoRA weights with gradients and AdamW moments, and per
    layer one hidden vector for every token of the largest stage's average micro-batch: each is
    less than training needs, so an estimate over the capacity cannot fit."""
    device = distributed.device().type
    mode = recipe.model.quantization.mode
    stored = {"4bit": 0.5, "8bit": 1.0}.get(mode)
    dtype_bytes = model_dtype(recipe.model.dtype, device).itemsize
    weights = sum(p.numel() for p in skeleton.parameters()) * (stored or dtype_bytes)
    lora = sum(recipe.lora.r * (m.in_features + m.out_features) for m in layers.values())
    config = skeleton.config
    hidden = getattr(config, "hidden_size", 0) or 0
    depth = getattr(config, "num_hidden_layers", 0) or 0
    tokens = max((micro_batch_tokens(recipe, task, processes) for task in tasks), default=0)
    activations = tokens * hidden * depth * dtype_bytes
    return MemoryEstimate(int(weights), lora * ADAM_BYTES, activations, *capacity(device))


def micro_batch_tokens(recipe: Recipe, task: TaskData, processes: int) -> int:
    """The tokens one process handles at once on average in a task's stage."""
    spec = next(t for t in recipe.tasks if t.name == task.name)
    batch = recipe.task_training(spec).batch_size
    share = min(-(-batch // processes), len(task.train))
    mean = sum(len(example) for example in task.train) / max(len(task.train), 1)
    return int(share * mean)


def capacity(device: str) -> tuple[int, str]:
    """The memory of the device a process trains on: its GPU's, or the host's RAM."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory, "of GPU memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of RAM"


def check_router_layer(recipe: Recipe, depth: int | None) -> None:
    """A router reads one of the model's depth + 1 hidden states (0 the embeddings)."""
    layer = recipe.strategy.router.layer
    if layer is None or depth is None or not recipe.strategy.routed:
        return
    if -(depth + 1) <= layer <= depth:
        return
    raise PecftError(
        f"strategy.router.layer: {layer} is not a hidden state of this model, which has "
        f"{depth} layers; give 0 (the token embeddings) to {depth}, or -1 (the last layer) to "
        f"-{depth + 1}."
    )


def check_limits(
    recipe: Recipe, skeleton: PreTrainedModel, tasks: list[TaskData], processes: int
) -> MemoryEstimate:
    """Every model-dependent range, and the memory estimate; returns the estimate."""
    layers = lora_layers(recipe, skeleton)
    check_rank(recipe, layers)
    check_router_layer(recipe, getattr(skeleton.config, "num_hidden_layers", None))
    check_lengths(recipe, tasks, context_length(skeleton.config))
    estimate = estimate_memory(recipe, skeleton, layers, tasks, processes)
    host_share = processes if estimate.device == "of RAM" else 1
    if estimate.total * host_share > estimate.capacity:
        shared = f" ({processes} processes share it)" if host_share > 1 else ""
        raise PecftError(
            f"this recipe cannot fit in memory: {estimate.describe()}{shared}. Lower "
            "training.batch_size (raise grad_accum to keep the global batch), lora.r or "
            "max_length, turn on training.gradient_checkpointing, or quantize the base."
        )
    return estimate
