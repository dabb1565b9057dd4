"""The recipe reference, rendered from the schema itself: every key, each strategy's options and
the routing modes, so the documentation cannot say what the code does not.

`python -m pecft_cli.recipe.reference > docs/recipe.md` writes docs/recipe.md, and a test fails
when that file differs from what this module renders. `pecft validate --explain` prints the
same rows for the recipe it checks.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from pecft_cli.recipe.json_schema import recipe_json_schema
from pecft_cli.recipe.schema import Recipe
from pecft_cli.recipe.sections import ROUTER_SECTIONS, ROUTING, StrategySection, TrainingOverride
from pecft_cli.recipe.strategies import TRAITS, Traits, strategy_options

COMMAND = "python -m pecft_cli.recipe.reference > docs/recipe.md"
NOT_EXPANDED = {TrainingOverride}  # the training section's keys again, each optional


@functools.cache
def definitions() -> dict[str, Any]:
    """The sections' JSON Schemas, built once and only when asked for (not at every start)."""
    return recipe_json_schema()["$defs"]


@dataclass(frozen=True)
class Key:
    """One key as the reference shows it."""

    path: str
    type: str
    default: str
    values: str
    help: str


def keys(model: type[BaseModel], prefix: str = "") -> list[Key]:
    """The keys of one section, each with its type, default, allowed values and help, read from
    the JSON Schema `pecft schema` prints (which knows the strategy names)."""
    schema = definitions().get(model.__name__) or model.model_json_schema()
    rows = []
    for name, info in model.model_fields.items():
        node = schema["properties"][name]
        if info.is_required():
            default = "required"
        elif section_in(info.annotation) is not None:
            default = ""  # a section: its own keys have the defaults
        else:
            default = value_text(to_jsonable_python(info.get_default(call_default_factory=True)))
        rows.append(
            Key(
                path=prefix + name,
                type=type_text(node),
                default=default,
                values=values_text(node),
                help=info.description or "",
            )
        )
    return rows


def sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """The model and every section inside it, depth first, each with its dotted path."""
    found: list[tuple[str, type[BaseModel]]] = [(prefix.rstrip("."), model)]
    for name, info in model.model_fields.items():
        inner = section_in(info.annotation)
        if inner is None or inner in NOT_EXPANDED:
            continue
        listed = typing.get_origin(info.annotation) is list or "list[" in str(info.annotation)
        found += sections(inner, f"{prefix}{name}{'[]' if listed else ''}.")
    return found


def section_in(annotation: Any) -> type[BaseModel] | None:
    """The section class inside `X`, `list[X]`, `X | None` or `Annotated[...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (inner := section_in(argument)) is not None:
            return inner
    return None


SCALARS = {"integer", "number", "string", "boolean", "null"}


def type_text(node: dict[str, Any]) -> str:
    """A JSON Schema node as a reader says it: `integer or null`, `list of string`."""
    if "$ref" in node:
        return "mapping"
    if "anyOf" in node:
        return " or ".join(dict.fromkeys(type_text(branch) for branch in node["anyOf"]))
    kind = node.get("type")
    if kind == "array":
        return f"list of {type_text(node.get('items', {}))}"
    if kind == "object":
        inner = node.get("additionalProperties")
        return f"mapping to {type_text(inner)}" if isinstance(inner, dict) and inner else "mapping"
    if kind is None and ("enum" in node or "const" in node):
        return "string"
    return kind if kind in SCALARS else "any"


def values_text(node: dict[str, Any]) -> str:
    """The values a node allows beyond its type: choices or bounds."""
    parts = []
    for branch in node.get("anyOf", [node]):
        listed = branch.get("items", {}).get("enum")
        if "enum" in branch or listed:
            parts.append(", ".join(str(value) for value in branch.get("enum", listed)))
        elif "const" in branch:
            parts.append(str(branch["const"]))
        bounds = [
            f"{sign} {branch[key]}"
            for key, sign in (
                ("minimum", "≥"),
                ("exclusiveMinimum", ">"),
                ("maximum", "≤"),
                ("exclusiveMaximum", "<"),
            )
            if key in branch
        ]
        if bounds:
            parts.append(", ".join(bounds))
        if branch.get("minItems"):
            parts.append(f"at least {branch['minItems']} item(s)")
    return "; ".join(dict.fromkeys(parts))


def value_text(value: Any) -> str:
    """A value as a recipe would write it."""
    if isinstance(value, str):
        return value if value.strip() == value and value else json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def table(rows: list[Key], first: str = "key") -> list[str]:
    lines = [f"| {first} | type | default | values | help |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        default = row.default if row.default == "required" else code(row.default)
        parts = (code(row.path), row.type, default, row.values, row.help)
        lines.append("| " + " | ".join(cell(part) for part in parts) + " |")
    return lines


def doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def combines(kind: Traits) -> str:
    """What a strategy goes with, in one line."""
    return (
        f"Replay buffer (`strategy.replay`): {'yes' if kind.takes_replay else 'no'}. "
        f"Routing (`strategy.routing`): {'yes' if kind.routes else 'no'}. "
        f"4-bit or 8-bit base: {'no' if kind.full_precision_only else 'yes'}."
    )


@dataclass(frozen=True)
class Setting:
    """A key and the value a recipe gives it."""

    key: Key
    value: str


@dataclass(frozen=True)
class StrategyHelp:
    """A recipe's strategy explained: what it does, its options as set, and its routing mode."""

    name: str
    summary: str
    combines: str
    options: list[Setting]
    replay: list[Setting] | None
    routing: str
    routing_help: str | None
    router: list[Setting] | None  # the routing mode's own settings


def settings(values: BaseModel, prefix: str = "") -> list[Setting]:
    """Every key of a section with the value it holds."""
    return [
        Setting(key, value_text(to_jsonable_python(getattr(values, name))))
        for key, name in zip(keys(type(values), prefix), type(values).model_fields, strict=True)
    ]


def strategy_help(section: StrategySection) -> StrategyHelp:
    """The strategy of a recipe with its options as validated (defaults filled in), its replay
    buffer's, and the routing mode's help when a router serves the inputs."""
    kind = TRAITS[section.name]
    options, replay = strategy_options(section)
    return StrategyHelp(
        name=section.name,
        summary=kind.summary,
        combines=combines(kind).replace("`", ""),
        options=settings(options),
        replay=None if replay is None else settings(replay),
        routing=section.routing,
        routing_help=ROUTING[section.routing] if section.routed else None,
        router=router_settings(section),
    )


def router_settings(section: StrategySection) -> list[Setting] | None:
    """The settings of the section the routing mode reads (strategy.router or .arrow)."""
    name = ROUTER_SECTIONS.get(section.routing)
    return None if name is None else settings(getattr(section, name), f"strategy.{name}.")


INTRO = """\
A recipe is one YAML file: what to train, on what, in which order. Every key below is checked
when the recipe loads; an unknown key is an error with a did-you-mean. `--set dotted.key=value`
overrides any key, typed by the same schema (`--set training.lr=1e-4`; a task by index or by
name: `--set tasks.0.training.epochs=3`, `--set tasks.lowercase.training.epochs=3`). Data and
model paths are relative to the recipe file.

`pecft schema` prints the same schema as JSON Schema. Save it and name it on a recipe's first
line, and an editor with a YAML language server (VS Code's YAML extension, for one) completes
keys, shows this help and flags typos as you write:

```yaml
# yaml-language-server: $schema=recipe.schema.json
name: my-stream
```

(`pecft schema > recipe.schema.json` beside the recipe.) `pecft validate RECIPE --explain`
prints the chosen strategy's options and routing mode from the tables below."""


def keys_part() -> list[str]:
    lines = []
    for path, model in sections(Recipe):
        title = f"`{path}`" if path else "Top level"
        lines += ["", f"## {title}", "", doc(model), "", *table(keys(model, path and path + "."))]
    return lines


def strategies_part() -> list[str]:
    lines = [
        "",
        "## Strategies",
        "",
        "`strategy.name` picks one; `strategy.options` takes its options, and any other is "
        "refused. `strategy.replay` takes the options of `replay` and adds a replay buffer to "
        "the strategies that say so.",
    ]
    for name, kind in TRAITS.items():
        lines += ["", f"### `{name}`", "", f"{kind.summary}.", "", combines(kind)]
        rows = keys(kind.options)
        if rows:
            lines += ["", doc(kind.options), "", *table(rows, first="option")]
        else:
            lines += ["", "No options."]
    return lines


def routing_part() -> list[str]:
    routed = ", ".join(f"`{name}`" for name, kind in TRAITS.items() if kind.routes)
    lines = [
        "",
        "## Routing modes",
        "",
        f"`strategy.routing` works with the strategies that keep a LoRA per task: {routed}.",
        "",
        "| mode | what it does |",
        "| --- | --- |",
    ]
    lines += [f"| `{mode}` | {cell(help_)} |" for mode, help_ in ROUTING.items()]
    return lines


def markdown() -> str:
    """The whole reference, as docs/recipe.md holds it."""
    lines = [
        "# Recipe reference",
        "",
        f"*Generated from the recipe schema by `{COMMAND}`; edit the schema "
        "(`pecft_cli/recipe/sections.py`, `schema.py`, `strategies.py`), not this file.*",
        "",
        INTRO,
    ]
    lines += keys_part() + strategies_part() + routing_part()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
