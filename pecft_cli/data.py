"""Task data: read a source, render each row into a prompt and a target, tokenize, collate.

Local files are read with the standard library so that a broken row is reported by its line;
`save_to_disk` folders and hub datasets go through `datasets`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from pecft_cli.errors import PecftError, did_you_mean, first_line, listing, short
from pecft_cli.recipe import Metric, Recipe, TaskSection
from pecft_cli.template import fill, template_fields

IGNORE_INDEX = -100


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


# ---------------------------------------------------------------------------------------------
# Reading rows


@dataclass
class Rows:
    """A split's rows, where they came from, and which of their fields are class columns
    (`ClassLabel` features, given by name; None when the source has no features)."""

    rows: list[dict[str, Any]]
    classes: frozenset[str] | None = None
    described: str = ""

    def named(self, described: str) -> Rows:
        self.described = described
        return self


def read_rows(task: TaskSection, split: str) -> Rows:
    """The rows of a task's train or eval data, sampled per class when the task asks."""
    read = read_split(task, split)
    counts = task.per_class
    count = None if counts is None else (counts.train if split == "train" else counts.eval)
    if counts is not None and count is not None:
        where = f"tasks '{task.name}' {split} ({read.described}), per_class"
        declared = task.labels is not None  # the classes named by the recipe itself
        read.rows = per_class(read, task.class_field(), count, counts.seed, where, declared)
    if task.labels is not None:
        where = f"tasks '{task.name}' {split} ({read.described}), labels"
        read.rows = relabel(read.rows, task.class_field(), task.labels, where)
    return read


def relabel(
    rows: list[dict[str, Any]], field: str, labels: dict[str, str], where: str
) -> list[dict[str, Any]]:
    """The rows with each value of `field` replaced by the words `labels` gives for it."""
    out = []
    for number, row in enumerate(rows, start=1):
        value = str(row.get(field))
        if value not in labels:
            raise PecftError(
                f"{where}: row {number} has {field} {short(value)}, which labels does not map"
                f"{did_you_mean(value, list(labels)) or '.'} Mapped: {listing(list(labels))}."
            )
        out.append({**row, field: labels[value]})
    return out


def read_split(task: TaskSection, split: str) -> Rows:
    """A split as its source holds it: a local file or folder, a saved dataset, or the hub."""
    where = f"tasks '{task.name}' {split}"
    reference = task.train if split == "train" else task.eval
    if task.source is None:
        if Path(reference).is_dir():
            return Rows(*read_saved(Path(reference), None, where)).named(reference)
        return Rows(read_local(Path(reference), where)).named(reference)
    source = Path(task.source)
    described = f"{task.source} [{reference}]"
    if source.is_dir():
        return Rows(*read_saved(source, reference, where)).named(described)
    if source.is_absolute():
        raise PecftError(
            f"{where}: source {task.source} does not exist. Give a `datasets.save_to_disk` folder "
            "or a hub dataset id as source, or drop source and name data files in train and eval."
        )
    return Rows(*read_hub(task.source, task.config, reference, where)).named(described)


def per_class(
    read: Rows, field: str, count: int, seed: int, where: str, declared: bool = False
) -> list[dict[str, Any]]:
    """At most `count` rows of each value of `field`, drawn with a seeded generator, in the
    source's order. A source with features must have `field` as a class column, unless the
    task's `labels` declare its classes."""
    if read.classes is not None and field not in read.classes and not declared:
        named = ", ".join(sorted(read.classes)) or "none"
        raise PecftError(
            f"{where}: the target field '{field}' is not a class column of this dataset (a "
            f"ClassLabel feature); per_class samples by class. Class columns here: {named}. "
            "Drop per_class, name a class column in the target, or declare its classes with "
            "`labels`."
        )
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(read.rows):
        groups.setdefault(str(row.get(field)), []).append(index)
    draw = random.Random(seed)
    kept = []
    for label in sorted(groups):
        members = groups[label]
        kept += draw.sample(members, count) if len(members) > count else members
    return [read.rows[index] for index in sorted(kept)]


def dataset_rows(data: Any) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """A `datasets.Dataset` as rows, a `ClassLabel` column's integers written as the class
    names (so a target on it yields "sports", not "1"), and the names of those columns."""
    from datasets import ClassLabel

    labels = {name: f for name, f in data.features.items() if isinstance(f, ClassLabel)}
    rows = data.to_list()
    for row in rows:
        for name, feature in labels.items():
            value = row.get(name)
            if isinstance(value, int) and 0 <= value < feature.num_classes:
                row[name] = feature.int2str(value)
    return rows, frozenset(labels)


def read_local(path: Path, where: str) -> list[dict[str, Any]]:
    """Rows of a local jsonl, json, csv or parquet file, or of a saved dataset folder."""
    if path.is_dir():
        return read_saved(path, None, where)[0]
    if not path.is_file():
        raise PecftError(
            f"{where}: data file {path} does not exist. Give a .jsonl, .json, .csv or .parquet "
            "file, or a `datasets.save_to_disk` folder (relative paths are taken from the "
            "recipe's folder)."
        )
    suffix = path.suffix.lower()
    readers = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
    if suffix not in readers:
        raise PecftError(
            f"{where}: {path} has an unknown extension '{suffix}'; use .jsonl, .json, .csv or "
            ".parquet."
        )
    try:
        return readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise PecftError(
            f"{where}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}). "
            "Re-save it as UTF-8."
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PecftError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
            except (RecursionError, ValueError) as exc:
                raise PecftError(f"{path}, line {number}: {unreadable_json(exc)}") from None
            if not isinstance(row, dict):
                raise PecftError(
                    f"{path}, line {number}: each line must be a JSON object with named fields; "
                    f"found {type(row).__name__}."
                )
            rows.append(row)
    return rows


def read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PecftError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    except (RecursionError, ValueError) as exc:
        raise PecftError(f"{path}: {unreadable_json(exc)}") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise PecftError(
            f"{path}: a .json data file must hold a list of objects with named fields."
        )
    return data


def unreadable_json(exc: BaseException) -> str:
    """Valid JSON that Python will not read: nested too deeply, or a number too long."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read; a row holds text fields and lists of strings."
    return f"JSON that cannot be read ({first_line(exc)})."


def read_csv(path: Path) -> list[dict[str, Any]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise PecftError(
                        f"{path}, line {reader.line_num}: the row has a different number of "
                        f"fields from the header ({len(header)}: {listing(header)})."
                    )
                rows.append(row)
        except csv.Error as exc:
            raise PecftError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None
    return rows


CSV_FIELD_LIMIT = 2**30  # a long document is a legitimate field; Python's default is 128 KiB


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise PecftError(f"{path}: not a readable parquet file ({first_line(exc)}).") from None


def read_saved(
    folder: Path, split: str | None, where: str
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """Rows of a `datasets.save_to_disk` folder (a Dataset, or one split of a DatasetDict),
    and its class columns."""
    from datasets import Dataset, load_from_disk

    try:
        data = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise PecftError(
            f"{where}: {folder} is not a `datasets.save_to_disk` folder ({exc})."
        ) from None
    if isinstance(data, Dataset):
        return dataset_rows(data)
    splits = list(data.keys())
    if split is None or split not in splits:
        raise PecftError(
            f"{where}: {folder} holds the splits {', '.join(splits)}; set `source: {folder}` "
            "and name one of them as the task's train or eval."
        )
    return dataset_rows(data[split])


def read_hub(
    name: str, config: str | None, split: str, where: str
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """Rows of a hub dataset split (from the local cache when offline), and its class columns."""
    from datasets import load_dataset

    try:
        data = load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types for a missing or offline dataset
        raise PecftError(
            f"{where}: could not load hub dataset '{name}' (config {short(config)}, split "
            f"'{split}'): {first_line(exc)}. Check the id, config and split; offline, load it "
            "once where the hub is reachable so that it is in the datasets cache, or save it "
            "with `datasets.save_to_disk` and point source at that folder."
        ) from None
    return dataset_rows(data)


# ---------------------------------------------------------------------------------------------
# Rendering and tokenizing


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


# ---------------------------------------------------------------------------------------------
# Batching


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
