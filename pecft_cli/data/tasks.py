"""Task data: each row of a task's source rendered into a prompt and a target, and tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from pecft_cli.data.read import read_rows
from pecft_cli.errors import PecftError, did_you_mean, listing, short
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.recipe.sections import Metric
from pecft_cli.recipe.template import fill, template_fields


@dataclass
class Example:
    """One row as the model sees it: token ids of the prompt and of the answer."""

    row: int
    prompt: str
    target: str
    prompt_ids: list[int]
    target_ids: list[int]
    choices: list[str] | None = None  # as the recipe or row gives them
    choice_ids: list[list[int]] | None = None  # as the model reads them after the prompt
    label: int | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class TaskData:
    """A task's examples, ready to train on and to score."""

    name: str
    metric: Metric
    train: list[Example]
    eval: list[Example]
    train_rows: int
    eval_rows: int
    too_long: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def render(template: str, row: dict[str, Any], where: str, what: str) -> str:
    """Fill a template's {field} placeholders from a row, naming the row if a field is missing."""
    missing = [name for name in template_fields(template) if row.get(name) is None]
    if missing:
        present = listing(list(row))
        raise PecftError(
            f"{where}: the {what} template names the field '{missing[0]}', which this row lacks "
            f"or leaves empty{did_you_mean(missing[0], [str(k) for k in row]) or '.'} "
            f"Fields present: {present}."
        )
    return fill(template, row)


def prompt_text(
    task: TaskSection, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, where: str
) -> str:
    """The prompt as the model reads it, wrapped in the chat template when the task asks."""
    text = render(task.prompt, row, where, "prompt")
    if not task.chat:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise PecftError(
            f"tasks '{task.name}': chat is true but the model's tokenizer has no chat template; "
            "set chat: false."
        )
    messages = [{"role": "user", "content": text}]
    if task.system:
        messages.insert(0, {"role": "system", "content": task.system})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def split_space(prompt: str, answer: str) -> tuple[str, str]:
    """Move the prompt's trailing whitespace onto the answer, as lm-evaluation-harness does,
    so that "Answer: " + "Paris" is tokenized as "Answer:" + " Paris"."""
    stripped = prompt.rstrip()
    return stripped, prompt[len(stripped) :] + answer


def encode(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def continuation_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    prompt: str,
    answer: str,
    special: bool,
) -> list[int]:
    """The answer's tokens as they fall when prompt and answer are tokenized as one text.

    Tokenizing the two together (as lm-evaluation-harness does) keeps the token boundary the
    model would see in running text; the prompt's own tokens are cut off the front.
    """
    whole = encode(tokenizer, prompt + answer, special)
    if whole[: len(prompt_ids)] != prompt_ids or len(whole) == len(prompt_ids):
        return encode(tokenizer, answer, special=False)
    return whole[len(prompt_ids) :]


def build_example(
    task: TaskSection,
    row: dict[str, Any],
    number: int,
    tokenizer: PreTrainedTokenizerBase,
    where: str,
) -> Example:
    """Render and tokenize one row; the target ends with the end-of-sequence token."""
    prompt = prompt_text(task, row, tokenizer, where)
    target = render(task.target_template(), row, where, "target")
    if not target.strip():
        raise PecftError(f"{where}: the target is empty; every row needs a non-empty answer.")
    choices = row_choices(task, row, where)
    label = None
    if choices is not None:
        stripped = [choice.strip() for choice in choices]
        if target.strip() not in stripped:
            raise PecftError(
                f"{where}: the target '{target.strip()}' is not one of the choices "
                f"({', '.join(stripped)})."
            )
        label = stripped.index(target.strip())
    # The choices keep their own text: acc_norm divides by its length, as the harness does.
    spoken = choices
    if not task.chat:
        bare_prompt, target = split_space(prompt, target)
        if choices is not None:
            spoken = [split_space(prompt, choice)[1] for choice in choices]
        prompt = bare_prompt
    special = not task.chat
    prompt_ids = encode(tokenizer, prompt, special)

    def answer_ids(answer: str) -> list[int]:
        return continuation_ids(tokenizer, prompt_ids, prompt, answer, special)

    return Example(
        row=number,
        prompt=prompt,
        target=target,
        prompt_ids=prompt_ids,
        target_ids=answer_ids(target) + [tokenizer.eos_token_id],
        choices=choices,
        choice_ids=[answer_ids(c) for c in spoken] if spoken else None,
        label=label,
    )


def row_choices(task: TaskSection, row: dict[str, Any], where: str) -> list[str] | None:
    """The row's answer options: the task's fixed list, or the list in the named field."""
    if task.choices is None or isinstance(task.choices, list):
        return task.choices
    value = row.get(task.choices)
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) for v in value):
        raise PecftError(
            f"{where}: choices names the field '{task.choices}', which must hold a list of at "
            f"least two strings in every row; found {short(value)}."
        )
    return value


def load_task(
    task: TaskSection, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, train: bool = True
) -> TaskData:
    """Read, render and tokenize a task's train and eval data, checking every row.

    `train=False` reads the eval split only, for scoring a run that is already trained.
    """
    splits: dict[str, list[Example]] = {"train": []}
    sources = {}
    for split in ("train", "eval") if train else ("eval",):
        read = read_rows(task, split)
        rows, described = read.rows, read.described
        if not rows:
            raise PecftError(
                f"tasks '{task.name}' {split}: {described} holds no rows; every task needs "
                f"{split} examples."
            )
        splits[split] = [
            build_example(
                task,
                row,
                number,
                tokenizer,
                f"tasks '{task.name}' {split} ({described}), row {number}",
            )
            for number, row in enumerate(rows, start=1)
        ]
        sources[split] = described
    max_length = recipe.task_training(task).max_length
    kept = [example for example in splits["train"] if len(example) <= max_length]
    if train and not kept:
        raise PecftError(
            f"tasks '{task.name}' train: every example is longer than training.max_length "
            f"({max_length} tokens); raise max_length or shorten the prompt."
        )
    limit = recipe.evaluation.limit
    data = TaskData(
        name=task.name,
        metric=recipe.task_metric(task),
        train=kept,
        eval=splits["eval"][:limit] if limit else splits["eval"],
        train_rows=len(splits["train"]),
        eval_rows=len(splits["eval"]),
        too_long=len(splits["train"]) - len(kept),
        sources=sources,
    )
    if data.metric == "choice" and task.choices is None:
        raise PecftError(
            f"tasks '{task.name}': the metric is 'choice' but the task has no choices; add "
            "choices or use metric: exact_match."
        )
    return data
