"""Answering prompts with a result: a run's stage, an adapter, or a merged model.

Decoding is greedy (the same as exact-match scoring), so an answer here is the answer the
evaluation saw. With a task named, each input fills the task's prompt template: a plain text
fills a template with one field, a JSON object fills any template. A stage of a routed run
(`strategy.routing`) answers each prompt as the evaluation did: with the adapter its router
picks from the prompt, or through Arrow over the task LoRAs; an adapter folder given
directly is used as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pecft_cli.data.files import path_kind
from pecft_cli.data.read import read_local
from pecft_cli.data.tasks import encode, prompt_text
from pecft_cli.errors import PecftError, did_you_mean
from pecft_cli.events import EventCallback, ignore
from pecft_cli.model.artifacts import Artifact, applied, open_artifact
from pecft_cli.model.load import (
    context_length,
    load_model,
    load_tokenizer,
    model_config,
    model_location,
)
from pecft_cli.parallel.distributed import device
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.recipe.sections import ModelSection
from pecft_cli.recipe.template import template_fields
from pecft_cli.runfolder.layout import BASE
from pecft_cli.scoring.scorer import greedy_answers
from pecft_cli.serving.answering import Decoder, OwnAdapter
from pecft_cli.serving.experts import SavedExperts
from pecft_cli.serving.routing import saved_routing

FREE_MAX_NEW_TOKENS = 128


@dataclass
class Generation:
    """What was asked, the prompt the model read, and its answer."""

    input: str | dict[str, Any]
    prompt: str
    answer: str
    routed_to: str | None = None  # the task whose adapter answered, in a routed run


@dataclass
class GenerateOptions:
    """How to answer: with a task's template (`task`), at a run's `stage`, on another `base`,
    in the chat template (`chat`, without a task), and the decoding limits."""

    task: str | None = None
    stage: str | None = None
    base: str | None = None
    chat: bool = False
    max_new_tokens: int | None = None
    stop: list[str] | None = None
    batch_size: int = 16


def generate(
    source: Path,
    inputs: list[str | dict[str, Any]],
    options: GenerateOptions | None = None,
    *,
    trust_remote_code: bool = False,
    on_event: EventCallback = ignore,
) -> list[Generation]:
    """Load the result at `source` and answer every input greedily, in order."""
    options = options or GenerateOptions()
    check_options(inputs, options)
    artifact = open_artifact(source, options.stage, options.base)
    section = task_section(artifact, options.task) if options.task else None
    if section is not None and options.chat:
        raise PecftError("--chat: with --task, the task's own chat setting applies; drop --chat.")
    tokenizer = load_tokenizer(artifact.base, trust_remote_code)
    prompts = [
        task_prompt(section, item, tokenizer, n)
        if section
        else free_prompt(item, tokenizer, options.chat, n)
        for n, item in enumerate(inputs, start=1)
    ]
    max_new_tokens, stop = options.max_new_tokens, options.stop
    if section is not None:
        recipe = artifact.recipe
        assert recipe is not None
        max_new_tokens = max_new_tokens or recipe.evaluation.max_new_tokens
        stop = recipe.evaluation.stop if stop is None else stop
    max_new_tokens = max_new_tokens or FREE_MAX_NEW_TOKENS
    ids = [ids for _, ids in prompts]
    check_context(artifact.base, ids, max_new_tokens, trust_remote_code)
    on_event("status", {"message": f"loading {artifact.path}"})

    def decode(model: Any, ids: list[list[int]]) -> dict[int, str]:
        return greedy_answers(model, tokenizer, ids, options.batch_size, max_new_tokens, stop or [])

    answers, routed = answer_all(artifact, ids, decode, tokenizer.pad_token_id, trust_remote_code)
    return [
        Generation(item, text, answers[i], routed[i])
        for i, (item, (text, _)) in enumerate(zip(inputs, prompts, strict=True))
    ]


def answer_all(
    artifact: Artifact, ids: list[list[int]], decode: Decoder, pad_id: int, trust_remote_code: bool
) -> tuple[list[str], list[str | None]]:
    """Every prompt answered as the artifact answers: a run's stage through the run's routing
    mode, an adapter folder or a merged model as it is; and the task each was routed to."""
    model = load_model(artifact.base, device(), trust_remote_code)
    saved, stage = artifact.saved, artifact.stage
    if saved is None or stage is None:
        experts = SavedExperts(with_adapter(model, artifact.adapter))
        return OwnAdapter().answer(experts, ids, decode)
    trained = 0 if stage == BASE else saved.state.planned_stages.index(stage) + 1
    routing = saved_routing(saved, pad_id).at(trained)
    experts = routing.open(model, saved, stage)
    experts.model.eval()
    return routing.answer(experts, ids, decode)


def check_options(inputs: list[str | dict[str, Any]], options: GenerateOptions) -> None:
    """The inputs and the numbers, checked before anything is loaded."""
    if not inputs:
        raise PecftError("no prompts given; pass them as arguments or with --file.")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise PecftError(
            f"--max-new-tokens {options.max_new_tokens}: give a positive number of tokens."
        )
    if options.batch_size < 1:
        raise PecftError(f"--batch-size {options.batch_size}: give a positive batch size.")
    if options.stop is not None and not all(options.stop):
        raise PecftError("--stop: a stop string cannot be empty.")


def check_context(
    base: ModelSection, prompts: list[list[int]], max_new_tokens: int, trust_remote_code: bool
) -> None:
    """Every prompt with its answer must fit the model's context, read from its config."""
    context = context_length(model_config(base, model_location(base), trust_remote_code))
    if context is None:
        return
    for number, ids in enumerate(prompts, start=1):
        if len(ids) + max_new_tokens > context:
            raise PecftError(
                f"prompt {number}: its {len(ids)} tokens and --max-new-tokens {max_new_tokens} go "
                f"past the model's context length of {context}; ask for fewer tokens."
            )


def read_inputs(path: Path) -> list[str | dict[str, Any]]:
    """Inputs from a file: rows of a .jsonl/.json/.csv/.parquet file, else one prompt per line."""
    where = f"--file {path}"
    kind = path_kind(path)
    if kind not in ("file", "missing"):
        what = "a folder" if kind == "folder" else kind
        raise PecftError(
            f"{where}: {path} is {what}, not a file of prompts; pecft did not open it."
        )
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        return list(read_local(path, where))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PecftError(f"{where}: no such file.") from None
    except UnicodeDecodeError as exc:
        raise PecftError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason}).") from None
    except OSError as exc:
        raise PecftError(f"{where}: cannot be read ({exc.strerror}).") from None
    return prompt_lines(text)


def prompt_lines(text: str) -> list[str | dict[str, Any]]:
    """One prompt per non-blank line (a prompt with line breaks goes in a .jsonl row)."""
    return [line for line in text.splitlines() if line.strip()]


def with_adapter(model: Any, adapter: Path | None) -> Any:
    """The base model with an adapter folder applied (stock PEFT), in eval mode."""
    return (model if adapter is None else applied(model, adapter)).eval()


def task_section(artifact: Artifact, name: str) -> TaskSection:
    recipe: Recipe | None = artifact.recipe
    if recipe is None:
        raise PecftError(
            f"--task {name}: {artifact.path} does not come from a pecft run, so it has no task "
            "templates; leave out --task and give the whole prompt."
        )
    names = [task.name for task in recipe.tasks]
    if name not in names:
        raise PecftError(
            f"--task {name}: the run has no such task{did_you_mean(name, names) or '.'} "
            f"Valid: {', '.join(names)}."
        )
    return recipe.tasks[names.index(name)]


def task_prompt(
    task: TaskSection, item: str | dict[str, Any], tokenizer: Any, number: int
) -> tuple[str, list[int]]:
    """A task's prompt for one input, tokenized as in training (trailing space to the answer)."""
    where = f"prompt {number}"
    row = item if isinstance(item, dict) else text_row(task, item, where)
    text = prompt_text(task, row, tokenizer, where)
    if not task.chat:
        text = text.rstrip()
    return text, encode(tokenizer, text, special=not task.chat)


def text_row(task: TaskSection, text: str, where: str) -> dict[str, Any]:
    """A plain-text input as a row: a JSON object as written, else the template's one field."""
    if text.lstrip().startswith("{"):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PecftError(
                f"{where}: looks like a JSON object but does not parse ({exc})."
            ) from None
        if isinstance(row, dict):
            return row
    fields = template_fields(task.prompt)
    if len(fields) != 1 or "." in fields[0]:
        raise PecftError(
            f"{where}: the prompt template of task '{task.name}' has the fields "
            f"{', '.join(fields) or '(none)'}; give each input as a JSON object with them, e.g. "
            f"{json.dumps({f: '...' for f in fields})}, or rows in a .jsonl file."
        )
    return {fields[0]: text}


def free_prompt(
    item: str | dict[str, Any], tokenizer: Any, chat: bool, number: int
) -> tuple[str, list[int]]:
    """A whole prompt as given, or wrapped in the model's chat template with `chat`."""
    if isinstance(item, dict):
        raise PecftError(
            f"prompt {number}: a row of fields needs --task to name the template that uses them."
        )
    if not chat:
        return item, encode(tokenizer, item, special=True)
    if not getattr(tokenizer, "chat_template", None):
        raise PecftError("--chat: the model's tokenizer has no chat template; leave out --chat.")
    messages = [{"role": "user", "content": item}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, encode(tokenizer, text, special=False)
