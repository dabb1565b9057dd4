"""The training loss: mean cross-entropy over a batch's answer tokens, computed only where needed.

A batch runs as one packed row (`data.pack`): the model never computes a padding position, and
transformers reads positions that restart at 0 as separate sequences, keeping attention inside
each. The language-model head, a vocabulary-wide product that is a large share of a small model's
compute, runs only at the positions that predict an answer token. A model whose attention ignores
packing (`packs_sequences`) trains on right-padded rows instead, with the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pecft_cli.data.batch import pack, pad


@dataclass
class AnswerBatch:
    """A micro-batch as the loss saw it: its features, the layout (`pad_id` None: packed), and
    the model's logits at the positions that predict an answer token, with those tokens."""

    features: list[dict[str, list[int]]]
    pad_id: int | None
    logits: torch.Tensor
    targets: torch.Tensor


def answer_logits(
    model: nn.Module,
    features: list[dict[str, list[int]]],
    pad_id: int | None = None,
    adapter_names: str | None = None,
) -> AnswerBatch:
    """The logits that predict the features' answer tokens: packed in one row, or padded with
    `pad_id` when one is given (a model that cannot pack). With `adapter_names`, every row runs
    through that one PEFT adapter (PEFT allows it in eval mode only)."""
    device = next(model.parameters()).device
    batch = pack(features) if pad_id is None else pad(features, pad_id)
    batch = {key: value.to(device) for key, value in batch.items()}
    rows = batch["input_ids"].shape[0]
    chosen = {} if adapter_names is None else {"adapter_names": [adapter_names] * rows}
    if pad_id is None:
        logits = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            logits_to_keep=batch["predict"],
            use_cache=False,
            **chosen,
        ).logits[0]
    else:
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,
            **chosen,
        ).logits.flatten(0, 1)[batch["predict"]]
    return AnswerBatch(features, pad_id, logits, batch["targets"])


def answer_loss(
    model: nn.Module, features: list[dict[str, list[int]]], pad_id: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the features' answer tokens given everything before them."""
    return cross_entropy(answer_logits(model, features, pad_id))


def cross_entropy(batch: AnswerBatch) -> torch.Tensor:
    return nn.functional.cross_entropy(batch.logits.float(), batch.targets)


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
