"""Examples into batches: the features a training step reads, packed or padded."""

from __future__ import annotations

import torch

from pecft_cli.data.tasks import Example


def training_features(example: Example) -> dict[str, list[int]]:
    """Input ids and labels with the prompt masked, so the loss is on the answer only."""
    return {
        "input_ids": example.prompt_ids + example.target_ids,
        "labels": [IGNORE_INDEX] * len(example.prompt_ids) + example.target_ids,
    }


def pack(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """A batch as one row: sequences end to end, positions restarting at 0 for each, so no
    position is padding. `predict` holds the positions whose next token is an answer token and
    `targets` those tokens; a sequence's first token has no position before it in its own
    sequence, so it is never a target."""
    input_ids, positions, labels = [], [], []
    for f in features:
        input_ids += f["input_ids"]
        positions += range(len(f["input_ids"]))
        labels += [IGNORE_INDEX, *f["labels"][1:]]
    targets = torch.tensor(labels)
    predict = torch.nonzero(targets[1:] != IGNORE_INDEX).flatten()
    return {
        "input_ids": torch.tensor([input_ids]),
        "position_ids": torch.tensor([positions]),
        "predict": predict,
        "targets": targets[predict + 1],
    }


def pad(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch right-padded to its longest sequence, for models whose attention ignores packing;
    `predict` indexes the flattened (row, position) grid."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids, mask, labels = [], [], []
    for f in features:
        padding = width - len(f["input_ids"])
        input_ids.append(f["input_ids"] + [pad_id] * padding)
        mask.append([1] * len(f["input_ids"]) + [0] * padding)
        labels += [*f["labels"][1:], *[IGNORE_INDEX] * (padding + 1)]
    targets = torch.tensor(labels)
    predict = torch.nonzero(targets != IGNORE_INDEX).flatten()
    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.tensor(mask),
        "predict": predict,
        "targets": targets[predict],
    }


def answer_tokens(feature: dict[str, list[int]]) -> int:
    """How many of a sequence's tokens the loss predicts (every answer token after the first
    position)."""
    return sum(label != IGNORE_INDEX for label in feature["labels"][1:])


IGNORE_INDEX = -100
