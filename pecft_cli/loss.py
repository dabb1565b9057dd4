"""The training loss: mean cross-entropy over a batch's answer tokens, computed only where needed.

A batch runs as one packed row (`data.pack`): the model never computes a padding position, and
transformers reads positions that restart at 0 as separate sequences, keeping attention inside
each. The language-model head, a vocabulary-wide product that is a large share of a small model's
compute, runs only at the positions that predict an answer token. A model whose attention ignores
packing (`packs_sequences`) trains on right-padded rows instead, with the same loss.
"""

from __future__ import annotations

import torch
from torch import nn

from pecft_cli.data import pack, pad


def answer_loss(
    model: nn.Module, features: list[dict[str, list[int]]], pad_id: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the features' answer tokens given everything before them: packed
    in one row, or padded with `pad_id` when one is given (a model that cannot pack)."""
    device = next(model.parameters()).device
    batch = pack(features) if pad_id is None else pad(features, pad_id)
    batch = {key: value.to(device) for key, value in batch.items()}
    if pad_id is None:
        logits = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            logits_to_keep=batch["predict"],
            use_cache=False,
        ).logits[0]
    else:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits.flatten(0, 1)[batch["predict"]]
    return nn.functional.cross_entropy(logits.float(), batch["targets"])


def packs_sequences(model: nn.Module) -> bool:
    """Whether the model keeps two sequences packed in one row apart: the second one's logits
    must be those it gets alone. Allowing 1% of the logits' scale covers any dtype's rounding;
    a leak across the boundary changes them by half their scale or more."""
    device = next(model.parameters()).device
    first, second = [1, 2, 3], [4, 5, 6, 7]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(
                input_ids=torch.tensor([first + second], device=device),
                position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3]], device=device),
                use_cache=False,
            ).logits[0, len(first) :]
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False)
    finally:
        model.train(was_training)
    alone = alone.logits[0]
    scale = float(alone.abs().max()) or 1.0
    return float((together - alone).abs().max()) <= 0.01 * scale
