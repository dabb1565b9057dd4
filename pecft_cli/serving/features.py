"""What a router reads of an input: the base model's hidden state at one layer, pooled over the
prompt (its last token, or the mean over its tokens).

The base model computes every feature (adapters off), so a task's statistics never change once
it has trained, and an input's route does not depend on which adapter serves it. One forward
pass gives every layer and every pooling at once (`all_features`), which is how the routing
benchmark measures them side by side.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from peft import PeftModel

from pecft_cli.parallel.sharding import no_grad

BATCH = 32
POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class Features:
    """Which hidden state and how it is pooled. `layer` indexes the model's hidden states: 0
    is the token embeddings, -1 the last layer, and e.g. 15 the output of block 15."""

    layer: int = -1
    pooling: str = "last"


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, tokens, d) hidden states, right-padded, to one vector per prompt."""
    if pooling == "last":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def all_features(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, pooling: str
) -> torch.Tensor:
    """Every prompt's pooled hidden state at every layer: (prompts, layers + 1, d), float32,
    in the prompts' order."""
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
                output = model(
                    input_ids=torch.tensor(ids, device=device),
                    attention_mask=mask_t,
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=1,
                )
                layers = [pool(h.float(), mask_t, pooling) for h in output.hidden_states]
                stacked = torch.stack(layers, dim=1)
                for i, vector in zip(chunk, stacked, strict=True):
                    rows[i] = vector.cpu()
    finally:
        model.train(was_training)
    return torch.stack([rows[i] for i in range(len(prompts))])


def features(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, spec: Features
) -> torch.Tensor:
    """Every prompt's feature as `spec` says: (prompts, d), float32."""
    return all_features(model, prompts, pad_id, spec.pooling)[:, spec.layer]
