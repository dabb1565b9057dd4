"""The packed, answer-only training loss against the plain per-example loss of transformers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pecft_cli.model.loss import answer_loss, packs_sequences

FEATURES = [
    {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
    {"input_ids": [3, 4, 5], "labels": [-100, 4, 5]},
    {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, 13, -100]},
]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def per_example_mean(model: torch.nn.Module) -> torch.Tensor:
    """transformers' own loss for each example alone, weighted to a mean over answer tokens."""
    total, count = torch.zeros(()), 0
    for f in FEATURES:
        labels = torch.tensor([f["labels"]])
        tokens = int((labels[0, 1:] != -100).sum())
        total += model(input_ids=torch.tensor([f["input_ids"]]), labels=labels).loss * tokens
        count += tokens
    return total / count


@pytest.mark.parametrize("pad_id", [None, 0], ids=["packed", "padded"])
def test_batched_loss_is_the_mean_over_every_answer_token(model, pad_id) -> None:
    with torch.no_grad():
        torch.testing.assert_close(
            answer_loss(model, FEATURES, pad_id), per_example_mean(model), atol=1e-5, rtol=1e-5
        )


def test_packed_gradients_equal_padded_gradients(model) -> None:
    grads = []
    for pad_id in (None, 0):
        model.zero_grad()
        answer_loss(model, FEATURES, pad_id).backward()
        grads.append(model.lm_head.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_a_model_that_lets_packed_sequences_see_each_other_is_detected(model) -> None:
    assert packs_sequences(model)
    forward = model.forward

    @functools.wraps(forward)
    def ignoring_positions(*args, position_ids=None, **kwargs):
        return forward(*args, **kwargs)

    model.forward = ignoring_positions
    try:
        assert not packs_sequences(model)
    finally:
        del model.forward
    assert model.training is False
