"""Scoring a model on a task's eval examples: one number per task, and the per-example evidence.

- exact_match: greedy generation (batched by length, `decoding.greedy_decode`, stopping at
  end-of-sequence, a stop string or max_new_tokens) compared after SQuAD-style normalisation,
  as the O-LoRA reference scores.
- rouge_l: the same generation, scored by ROUGE-L F1 over normalised words, for answers that
  are sentences rather than labels.
- choice: log-likelihood ranking of the task's choices after the prompt, as
  lm-evaluation-harness does (`acc`; `acc_norm` divides by the choice's length in characters).
  The prompt runs through the model once; the choices continue from its cached keys and values.

Scoring runs with the active LoRAs folded into a copy of the weights (`folding`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from pecft_cli.data.tasks import Example, TaskData
from pecft_cli.parallel.distributed import gather
from pecft_cli.parallel.sharding import is_sharded, no_grad
from pecft_cli.recipe.sections import EvaluationSection
from pecft_cli.scoring.decoding import CACHE, greedy_decode, prefill
from pecft_cli.scoring.folding import folded

PUNCTUATION = frozenset(string.punctuation)


@dataclass
class TaskScore:
    """A task's score at one stage and the predictions behind it."""

    task: str
    metric: str
    score: float
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def event(self, stage: str, seconds: float) -> dict[str, Any]:
        """The progress event a caller reports once this score is known."""
        return {
            "stage": stage,
            "task": self.task,
            "metric": self.metric,
            "score": self.score,
            "seconds": round(seconds, 2),
        }


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of normalised words, as precision and recall."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, other in enumerate(ref):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


Shard = tuple[int, int]  # (this process's rank, number of processes)
WHOLE: Shard = (0, 1)


def score_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    config: EvaluationSection,
    shard: Shard = WHOLE,
) -> TaskScore:
    """Score one task with the model as it stands (eval mode, no gradients).

    With a shard, only that process's batches are scored; `combine` joins the parts.
    """
    was_training = model.training
    model.eval()
    try:
        with folded(model, config.fold_adapters), no_grad(model):
            if data.metric == "choice":
                predictions = rank_choices(model, data.eval, config.batch_size, shard)
            else:
                predictions = generate_answers(
                    model, tokenizer, data.eval, config, data.metric, shard
                )
    finally:
        model.train(was_training)
    return TaskScore(data.name, data.metric, mean_score(predictions), predictions)


def mean_score(predictions: list[dict[str, Any]]) -> float:
    return sum(p["score"] for p in predictions) / len(predictions) if predictions else 0.0


def combine(parts: list[TaskScore]) -> TaskScore:
    """One task's score from the parts that several processes scored, in the examples' order."""
    predictions = sorted((p for part in parts for p in part.predictions), key=lambda p: p["row"])
    return TaskScore(parts[0].task, parts[0].metric, mean_score(predictions), predictions)


def length_batches(lengths: list[int], size: int, shard: Shard = WHOLE) -> list[list[int]]:
    """Indices sorted by length and cut into batches (little padding); a shard takes every
    world-th batch from its rank, so each batch is the same whatever the number of processes."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    rank, world = shard
    return batches[rank::world]


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    config: EvaluationSection,
    metric: str = "exact_match",
    shard: Shard = WHOLE,
) -> list[dict[str, Any]]:
    """Greedy answers to the examples' prompts, scored against their targets."""
    answers = greedy_answers(
        model,
        tokenizer,
        [example.prompt_ids for example in examples],
        config.batch_size,
        config.max_new_tokens,
        config.stop,
        shard,
        config.fold_adapters,
    )
    results = []
    for i in sorted(answers):
        example, answer = examples[i], answers[i]
        correct = normalize_answer(answer) == normalize_answer(example.target)
        score = rouge_l(answer, example.target) if metric == "rouge_l" else float(correct)
        results.append(
            {
                "row": example.row,
                "input": example.prompt,
                "target": example.target.strip(),
                "prediction": answer,
                "correct": correct,
                "score": score,
            }
        )
    return results


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    stop: list[str],
    shard: Shard = WHOLE,
    fold: bool = True,
) -> dict[int, str]:
    """Greedy answers by prompt index, in length-sorted batches; a sequence ends at
    end-of-sequence or a stop string, and leaves its batch then. `fold`: see `folding`."""
    eos = tokenizer.eos_token_id

    def ended(new: list[int]) -> bool:
        text = tokenizer.decode(new, skip_special_tokens=True)
        return new[-1] == eos or any(s in text for s in stop)

    answers: dict[int, str] = {}
    with folded(model, fold), no_grad(model):
        for chunk in length_batches([len(p) for p in prompts], batch_size, shard):
            rows = [prompts[i] for i in chunk]
            if is_sharded(model):
                new = synced_generate(model, tokenizer, rows, max_new_tokens, stop)
            else:
                new = greedy_decode(model, rows, max_new_tokens, ended)
            for tokens, i in zip(new, chunk, strict=True):
                answers[i] = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop)
    return answers


def synced_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[list[int]],
    max_new_tokens: int,
    stop: list[str],
) -> list[list[int]]:
    """A sharded model's batch through `generate`, whose processes step together until every
    one has finished (`synced_gpus`): every forward pass of a sharded model is a collective."""
    device = next(model.parameters()).device
    pad_id, width = tokenizer.pad_token_id, max(len(row) for row in rows)
    ids = [[pad_id] * (width - len(row)) + row for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    output = model.generate(
        input_ids=torch.tensor(ids, device=device),
        attention_mask=torch.tensor(mask, device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        stopping_criteria=StoppingCriteriaList([StopAtText(tokenizer, stop, width)]),
        synced_gpus=True,
    )
    return output[:, width:].tolist()


class StopAtText(StoppingCriteria):
    """Ends each sequence once its new text holds a stop string. Decoding a batch's few new
    tokens costs microseconds a step; transformers' `stop_strings` rebuilds tables over the
    whole vocabulary on every `generate` call (0.46 s a batch for a 49k vocabulary)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The answer up to the first stop string (generation may run a few tokens past it)."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


def rank_choices(
    model: PreTrainedModel, examples: list[Example], batch_size: int, shard: Shard = WHOLE
) -> list[dict[str, Any]]:
    """Sum of log-probabilities of each choice's tokens after the prompt; best choice wins."""
    # A chunk's choices that span several tokens run as one batch after its prompts: size chunks
    # so that this batch stays near batch_size rows.
    longest = max(sum(len(ids) > 1 for ids in e.choice_ids or []) for e in examples)
    per_chunk = max(1, batch_size // max(longest, 1))
    sums: dict[int, list[float]] = {}
    for chunk in length_batches([len(e.prompt_ids) for e in examples], per_chunk, shard):
        for i, values in zip(
            chunk, choice_logprobs(model, [examples[i] for i in chunk]), strict=True
        ):
            sums[i] = values
    results = []
    for i in sorted(sums):
        example = examples[i]
        choices = example.choices or []
        best = max(range(len(choices)), key=lambda c: sums[i][c])
        best_norm = max(range(len(choices)), key=lambda c: sums[i][c] / max(len(choices[c]), 1))
        results.append(
            {
                "row": example.row,
                "input": example.prompt,
                "target": example.target.strip(),
                "prediction": choices[best].strip(),
                "correct": best == example.label,
                "correct_norm": best_norm == example.label,
                "score": float(best == example.label),
                "logprobs": [round(s, 4) for s in sums[i]],
            }
        )
    return results


def choice_logprobs(model: PreTrainedModel, examples: list[Example]) -> list[list[float]]:
    """Each example's summed choice log-probabilities, running every prompt only once.

    The prompts run as `decoding.prefill` runs them (their shared start once, the head at each
    prompt's end only), and those log-probabilities score every choice's first token. Choices
    with more tokens then continue from a copy of their prompt's cached keys and values.
    """
    longer = [
        (row, c)
        for row, example in enumerate(examples)
        for c, choice in enumerate(example.choice_ids or [])
        if len(choice) > 1
    ]
    # Every process of a sharded model must run the same passes: no shared-start pass there.
    state = prefill(
        model, [e.prompt_ids for e in examples], bool(longer), share=not is_sharded(model)
    )
    first = torch.log_softmax(state.logits, -1)
    sums = [
        [first[row, choice[0]].item() for choice in example.choice_ids or []]
        for row, example in enumerate(examples)
    ]
    if not longer:
        return sums
    device = state.mask.device
    rows = torch.tensor([row for row, _ in longer], device=device)
    state.cache.batch_select_indices(rows)
    tails = [examples[row].choice_ids[c] for row, c in longer]
    steps = max(len(tail) for tail in tails) - 1
    feed = torch.zeros(len(longer), steps, dtype=torch.long, device=device)
    for k, tail in enumerate(tails):
        feed[k, : len(tail) - 1] = torch.tensor(tail[:-1])
    feed_mask = (
        torch.arange(steps, device=device)
        < torch.tensor([len(tail) - 1 for tail in tails], device=device)[:, None]
    ).long()
    logits = model(
        input_ids=feed,
        attention_mask=torch.cat([state.mask[rows], feed_mask], dim=1),
        position_ids=state.positions[rows][:, None] + torch.arange(steps, device=device),
        use_cache=True,
        **{CACHE: state.cache},
    ).logits.float()
    scores = torch.log_softmax(logits, dim=-1)
    for k, ((row, c), tail) in enumerate(zip(longer, tails, strict=True)):
        picked = scores[k, torch.arange(len(tail) - 1), torch.tensor(tail[1:], device=device)]
        sums[row][c] += picked.sum().item()
    return sums


def score_shared(
    accelerator: Accelerator,
    model: Any,
    tokenizer: Any,
    task: TaskData,
    evaluation: EvaluationSection,
) -> TaskScore:
    """Score one task with every process taking its share of the batches; each gets the whole.
    A sharded model's forward passes are collectives, so there every process scores them all."""
    if is_sharded(model):
        return score_task(model, tokenizer, task, evaluation)
    shard = (accelerator.process_index, accelerator.num_processes)
    result = score_task(model, tokenizer, task, evaluation, shard)
    return combine(gather(accelerator, result)) if accelerator.num_processes > 1 else result
