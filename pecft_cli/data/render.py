"""Rows rendered into prompt and target text, and every row checked, without a model.

What the model reads is decided here: which fields fill a template, how a value becomes text,
which choices a row has. Nothing here imports a model library, so `validate` and `train` read and
check every row of a local data file before torch loads; a tokenizer only turns the text into ids
afterwards (`pecft_cli.data.tasks`).

A value becomes text by one rule: a string as it is; an integer as its decimal digits; a float as
Python's shortest form that reads back as the same number (2.5, 3.0, 1e-05). A list, an object,
a boolean, null, an infinite or NaN float, or any other value is refused by the task, file, row
and field: pick inside a list or object with a dotted placeholder (`{answers.text.0}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pecft_cli.data.read import read_rows, split_source
from pecft_cli.errors import PecftError, did_you_mean, listing, short
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.recipe.template import Field, parse_template


@dataclass
class Rendered:
    """One row as text: the prompt (before any chat template), the target and the choices."""

    row: int
    prompt: str
    target: str
    choices: list[str] | None = None
    label: int | None = None

    @property
    def characters(self) -> int:
        return len(self.prompt) + len(self.target)


@dataclass
class RenderedTask:
    """A task's rows as text, by split, and where each split came from."""

    name: str
    splits: dict[str, list[Rendered]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    names = {str: "text", int: "a number", bool: "a boolean", list: "a list", dict: "an object"}
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a number that is not finite"
    return names.get(type(value), f"a value of type {type(value).__name__}")


def as_text(value: Any, where: str, what: str, name: str) -> str:
    """A field's value as the text a template writes; anything but text or a finite number is
    refused, so no Python repr reaches a prompt or a target."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    hint = {
        list: f"pick one item with {{{name}.0}}",
        dict: f"pick one key with {{{name}.<key>}}",
    }.get(type(value), "write it in the data as the text the model should read")
    raise PecftError(
        f"{where}: the {what} template's field '{name}' holds {kind_of(value)} "
        f"({short(value, 60)}), not text or a number; {hint}."
    )


def pick(row: dict[str, Any], placeholder: Field, where: str, what: str) -> Any:
    """The value a placeholder names: a field, or a key or position inside one."""
    first, *inside = placeholder.path
    if row.get(first) is None:
        raise PecftError(
            f"{where}: the {what} template names the field '{first}', which this row lacks "
            f"or leaves empty{did_you_mean(first, [str(k) for k in row]) or '.'} "
            f"Fields present: {listing(list(row))}."
        )
    value, reached = row[first], first
    for key in inside:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise PecftError(
                f"{where}: the {what} template picks '{placeholder.name}', but "
                f"'{reached}' {lacks(value, key)}."
            )
        reached += f".{key}"
    return value


def lacks(value: Any, key: str) -> str:
    """Why `key` picks nothing inside `value`, as the end of a sentence."""
    if isinstance(value, dict):
        return f"has no key '{key}'; its keys: {listing([str(k) for k in value])}"
    if isinstance(value, list):
        return f"holds {len(value)} items, numbered from 0"
    return f"holds {kind_of(value)}, which has no '{key}'"


def render(template: str, row: dict[str, Any], where: str, what: str) -> str:
    """A template filled from a row, naming the row and field of any value it cannot write."""
    return "".join(
        as_text(pick(row, part, where, what), where, what, part.name)
        if isinstance(part, Field)
        else part
        for part in parse_template(template)
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


def render_row(task: TaskSection, row: dict[str, Any], number: int, where: str) -> Rendered:
    """One row as text, checked: a non-empty target, one of the choices when there are any."""
    prompt = render(task.prompt, row, where, "prompt")
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
    return Rendered(number, prompt, target, choices, label)


def render_task(task: TaskSection, train: bool = True) -> RenderedTask:
    """Read and render a task's train and eval rows (eval only without `train`)."""
    rendered = RenderedTask(task.name)
    for split in ("train", "eval") if train else ("eval",):
        read = read_rows(task, split)
        if not read.rows:
            raise PecftError(
                f"tasks '{task.name}' {split}: {read.described} holds no rows; every task needs "
                f"{split} examples."
            )
        where = f"tasks '{task.name}' {split} ({read.described}), row"
        rendered.splits[split] = [
            render_row(task, row, number, f"{where} {number}")
            for number, row in enumerate(read.rows, start=1)
        ]
        rendered.sources[split] = read.described
    return rendered


def render_local(recipe: Recipe) -> dict[str, RenderedTask]:
    """Every task whose data is in local files, read and rendered; the others' paths checked.

    What `validate` and `train` run before any model library loads: a `save_to_disk` folder or
    a hub dataset is read through `datasets` later, with the model's tokenizer.
    """
    rendered = {}
    for task in recipe.tasks:
        kinds = {split_source(task, split) for split in ("train", "eval")}
        if kinds == {"file"}:
            rendered[task.name] = render_task(task)
    return rendered
