"""Task data: each row of a task's source rendered into a prompt and a target, and tokenized.

A training row whose text cannot fit `max_length` tokens is skipped before it is tokenized, by a
bound on its characters: no token of the tokenizer covers more characters than its longest entry,
so text longer than `max_length` times that (four times over, for normalizers that fold several
characters into one) cannot fit. Tokenizing is the slow part of reading data, and a field of
megabytes would otherwise take minutes; an eval prompt past that bound for the model's context is
refused the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pecft_cli.data.render import Rendered, RenderedTask, render, render_task
from pecft_cli.errors import PecftError
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.recipe.sections import Metric

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FOLDING = 4  # characters a normalizer may fold into one, at most, in the length bound


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


def prompt_text(
    task: TaskSection, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, where: str
) -> str:
    """The prompt as the model reads it, wrapped in the chat template when the task asks."""
    return chat_prompt(task, render(task.prompt, row, where, "prompt"), tokenizer)


def chat_prompt(task: TaskSection, text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """A rendered prompt in the tokenizer's chat template, when the task asks for it."""
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
    task: TaskSection, rendered: Rendered, tokenizer: PreTrainedTokenizerBase
) -> Example:
    """Tokenize one rendered row; the target ends with the end-of-sequence token."""
    prompt, target = chat_prompt(task, rendered.prompt, tokenizer), rendered.target
    # The choices keep their own text: acc_norm divides by its length, as the harness does.
    spoken = choices = rendered.choices
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
        row=rendered.row,
        prompt=prompt,
        target=target,
        prompt_ids=prompt_ids,
        target_ids=answer_ids(target) + [tokenizer.eos_token_id],
        choices=choices,
        choice_ids=[answer_ids(c) for c in spoken] if spoken else None,
        label=rendered.label,
    )


def token_characters(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters of text one token can stand for: the longest vocabulary entry."""
    return max(map(len, tokenizer.get_vocab()), default=1) * FOLDING


def load_task(
    task: TaskSection,
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    train: bool = True,
    rendered: RenderedTask | None = None,
    context: int | None = None,
) -> TaskData:
    """Tokenize a task's train and eval rows, read and rendered here unless `rendered` has them.

    `train=False` reads the eval split only, for scoring a run that is already trained. With the
    model's `context` length, an eval prompt that cannot fit it is refused before tokenizing.
    """
    rendered = rendered or render_task(task, train)
    per_token = token_characters(tokenizer)
    max_length = recipe.task_training(task).max_length
    rows = rendered.splits["train"] if train else []
    fit = [row for row in rows if row.characters <= max_length * per_token]
    examples = (build_example(task, row, tokenizer) for row in fit)
    kept = [example for example in examples if len(example) <= max_length]
    if train and not kept:
        raise PecftError(
            f"tasks '{task.name}' train: every example is longer than training.max_length "
            f"({max_length} tokens); raise max_length or shorten the prompt."
        )
    limit = recipe.evaluation.limit
    scored = rendered.splits["eval"][:limit] if limit else rendered.splits["eval"]
    for row in scored if context is not None else []:
        if len(row.prompt) > context * per_token:
            raise PecftError(
                f"tasks '{task.name}' eval, row {row.row}: the prompt's {len(row.prompt):,} "
                f"characters go past the model's context length of {context} tokens however "
                f"they are tokenized (a token stands for {per_token} characters at most); "
                "shorten the prompt."
            )
    data = TaskData(
        name=task.name,
        metric=recipe.task_metric(task),
        train=kept,
        eval=[build_example(task, row, tokenizer) for row in scored],
        train_rows=len(rows),
        eval_rows=len(rendered.splits["eval"]),
        too_long=len(rows) - len(kept),
        sources=rendered.sources,
    )
    if data.metric == "choice" and task.choices is None:
        raise PecftError(
            f"tasks '{task.name}': the metric is 'choice' but the task has no choices; add "
            "choices or use metric: exact_match."
        )
    return data
