"""What a router reads of an input: the base model's hidden state at one layer, pooled over the
prompt: its last token, the mean over its tokens, or the mean over its filled-in fields (the
tokens between the template's fixed start and end, which the router learns from the first
task's prompts: their longest common first and last tokens).

The base model computes every feature (adapters off), so a task's statistics never change once
it has trained, and an input's route does not depend on which adapter serves it. One forward
pass gives every layer and every pooling at once (`all_features`), which is how the routing
benchmark measures them side by side.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from peft import PeftModel

from pecft_cli.parallel.sharding import no_grad

BATCH = 32
POOLINGS = ("last", "mean", "fields")


@dataclass(frozen=True)
class Features:
    """Which hidden state and how it is pooled. `layer` indexes the model's hidden states: 0
    is the token embeddings, -1 the last layer, and e.g. 15 the output of block 15; None until
    `settled` picks the default. `prefix` and `suffix` are the template's fixed tokens that
    `fields` pooling leaves out."""

    layer: int | None = None
    pooling: str = "last"
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()


def affixes(prompts: list[list[int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The longest first and last tokens every prompt shares (what the template fixes), never
    overlapping in the shortest prompt."""
    if not prompts:
        return (), ()
    first, shortest = prompts[0], min(map(len, prompts))
    start = 0
    while start < shortest and all(p[start] == first[start] for p in prompts):
        start += 1
    end = 0
    while end < shortest - start and all(p[-1 - end] == first[-1 - end] for p in prompts):
        end += 1
    return tuple(first[:start]), tuple(first[len(first) - end :])


def default_layer(model: torch.nn.Module) -> int:
    """Two thirds of the way up the model: the layer the routing table (docs/results.md)
    found best on every stream for both router kinds (the last layer's state is shaped by the
    next-token head); the last layer for a model whose config does not give its depth."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    depth = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    return -1 if not isinstance(depth, int) else round(2 * depth / 3)


def settled(spec: Features, model: torch.nn.Module, prompts: list[list[int]]) -> Features:
    """`spec` with what the first task fixes filled in: the default layer where none was
    given, and for `fields` pooling the template's fixed ends, learnt from its prompts."""
    layer = default_layer(model) if spec.layer is None else spec.layer
    prefix, suffix = affixes(prompts) if spec.pooling == "fields" else (spec.prefix, spec.suffix)
    return replace(spec, layer=layer, prefix=prefix, suffix=suffix)


def field_span(prompt: list[int], spec: Features) -> tuple[int, int]:
    """The positions `fields` pooling averages over: the prompt without the template's fixed
    start and end where it has them; the whole prompt when nothing would be left."""
    low = len(spec.prefix) if tuple(prompt[: len(spec.prefix)]) == spec.prefix else 0
    tail = len(spec.suffix)
    high = (
        len(prompt) - tail
        if tail and tuple(prompt[len(prompt) - tail :]) == spec.suffix
        else len(prompt)
    )
    return (low, high) if high > low else (0, len(prompt))


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, tokens, d) hidden states, right-padded, to one vector per prompt."""
    if pooling == "last":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def all_features(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, spec: Features
) -> torch.Tensor:
    """Every prompt's hidden state pooled as `spec` says at every layer (its layer is not
    read): (prompts, layers + 1, d), float32, in the prompts' order."""
    device = next(model.parameters()).device
    off = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with off, no_grad(model):
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                width = max(len(prompts[i]) for i in chunk)
                ids = [prompts[i] + [pad_id] * (width - len(prompts[i])) for i in chunk]
                mask = [[1] * len(prompts[i]) + [0] * (width - len(prompts[i])) for i in chunk]
                mask_t = torch.tensor(mask, device=device)
                kept = torch.tensor(
                    [span_mask(prompts[i], spec, width) for i in chunk], device=device
                )
                output = model(
                    input_ids=torch.tensor(ids, device=device),
                    attention_mask=mask_t,
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=1,
                )
                pooling = "mean" if spec.pooling == "fields" else spec.pooling
                chosen = kept if spec.pooling == "fields" else mask_t
                layers = [pool(h.float(), chosen, pooling) for h in output.hidden_states]
                stacked = torch.stack(layers, dim=1)
                for i, vector in zip(chunk, stacked, strict=True):
                    rows[i] = vector.cpu()
    finally:
        model.train(was_training)
    return torch.stack([rows[i] for i in range(len(prompts))])


def features(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, spec: Features
) -> torch.Tensor:
    """Every prompt's feature as `spec` says (its layer settled): (prompts, d), float32."""
    assert spec.layer is not None, "a router's layer is settled when it learns its first task"
    return all_features(model, prompts, pad_id, spec)[:, spec.layer]


def span_mask(prompt: list[int], spec: Features, width: int) -> list[int]:
    """1 over the positions `fields` pooling averages, 0 elsewhere, padded to `width`."""
    low, high = field_span(prompt, spec)
    return [0] * low + [1] * (high - low) + [0] * (width - high)
