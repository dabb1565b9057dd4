"""Scoring a model on a task's eval examples: one number per task, and the per-example evidence.

- exact_match: greedy generation (batched, left-padded, stopping at end-of-sequence or a newline)
  compared after SQuAD-style normalisation, as the O-LoRA reference scores.
- choice: log-likelihood ranking of the task's choices after the prompt, as
  lm-evaluation-harness does (`acc`; `acc_norm` divides by the choice's length in characters).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pecft_cli.data import Example, TaskData
from pecft_cli.recipe import EvaluationSection

STOP = "\n"


@dataclass
class TaskScore:
    """A task's score at one stage and the predictions behind it."""

    task: str
    metric: str
    score: float
    predictions: list[dict[str, Any]] = field(default_factory=list)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def score_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    config: EvaluationSection,
) -> TaskScore:
    """Score one task with the model as it stands (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if data.metric == "choice":
                predictions = rank_choices(model, data.eval, config.batch_size)
            else:
                predictions = generate_answers(model, tokenizer, data.eval, config)
    finally:
        model.train(was_training)
    score = sum(p["correct"] for p in predictions) / len(predictions)
    return TaskScore(data.name, data.metric, score, predictions)


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    config: EvaluationSection,
) -> list[dict[str, Any]]:
    """Greedy answers in length-sorted, left-padded batches; output order follows the input."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
    answers: dict[int, str] = {}
    for start in range(0, len(order), config.batch_size):
        chunk = order[start : start + config.batch_size]
        width = max(len(examples[i].prompt_ids) for i in chunk)
        ids = [
            [pad_id] * (width - len(examples[i].prompt_ids)) + examples[i].prompt_ids for i in chunk
        ]
        mask = [
            [0] * (width - len(examples[i].prompt_ids)) + [1] * len(examples[i].prompt_ids)
            for i in chunk
        ]
        output = model.generate(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=[STOP],
            tokenizer=tokenizer,
        )
        for row, i in zip(output[:, width:].tolist(), chunk, strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers[i] = text.split(STOP, 1)[0].strip()
    return [
        {
            "row": example.row,
            "input": example.prompt,
            "target": example.target.strip(),
            "prediction": answers[i],
            "correct": normalize_answer(answers[i]) == normalize_answer(example.target),
        }
        for i, example in enumerate(examples)
    ]


def rank_choices(
    model: PreTrainedModel, examples: list[Example], batch_size: int
) -> list[dict[str, Any]]:
    """Sum of log-probabilities of each choice's tokens after the prompt; best choice wins."""
    device = next(model.parameters()).device
    pairs = [(i, c) for i, ex in enumerate(examples) for c in range(len(ex.choices or []))]
    pairs.sort(key=lambda p: len(examples[p[0]].prompt_ids) + len(examples[p[0]].choice_ids[p[1]]))
    logprob: dict[tuple[int, int], float] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        sequences = [examples[i].prompt_ids + examples[i].choice_ids[c] for i, c in chunk]
        width = max(len(s) for s in sequences)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=device)
        mask = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device
        )
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for row, (i, c) in enumerate(chunk):
            start_pos = len(examples[i].prompt_ids)
            choice = examples[i].choice_ids[c]
            scores = torch.log_softmax(
                logits[row, start_pos - 1 : start_pos - 1 + len(choice)], dim=-1
            )
            picked = scores.gather(1, torch.tensor(choice, device=device).unsqueeze(1))
            logprob[(i, c)] = picked.sum().item()
    results = []
    for i, example in enumerate(examples):
        choices = example.choices or []
        sums = [logprob[(i, c)] for c in range(len(choices))]
        best = max(range(len(choices)), key=lambda c: sums[c])
        best_norm = max(range(len(choices)), key=lambda c: sums[c] / max(len(choices[c]), 1))
        results.append(
            {
                "row": example.row,
                "input": example.prompt,
                "target": example.target.strip(),
                "prediction": choices[best].strip(),
                "correct": best == example.label,
                "correct_norm": best_norm == example.label,
                "logprobs": [round(s, 4) for s in sums],
            }
        )
    return results
