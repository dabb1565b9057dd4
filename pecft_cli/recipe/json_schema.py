"""The recipe as JSON Schema: what `pecft schema` prints, for editors and other tools.

Pydantic's schema of the recipe sections, plus what only the strategy table knows: the strategy
names and, for each, the options it takes (an `if`/`then` rule per strategy), so an editor
completes `strategy.options` for the strategy named and flags an option it does not take. What
needs more than one key's value (a per-task option naming a task, osf on a quantized base) is
left to `pecft validate`.
"""

from __future__ import annotations

from typing import Any

from pecft_cli.recipe.schema import Recipe
from pecft_cli.recipe.sections import Section, StrategySection
from pecft_cli.recipe.strategies import TRAITS, ReplayOptions, Traits

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def recipe_json_schema() -> dict[str, Any]:
    """The whole recipe's JSON Schema, strategy options included."""
    schema = Recipe.model_json_schema()
    defs = schema["$defs"]
    for options in {kind.options for kind in TRAITS.values()} | {ReplayOptions}:
        add_definition(defs, options)
    strategy = defs["StrategySection"]
    keys = strategy["properties"]
    keys["name"]["enum"] = list(TRAITS)
    keys["name"]["description"] = "the continual-learning strategy: " + "; ".join(
        f"{name}: {kind.summary}" for name, kind in TRAITS.items()
    )
    keys["options"]["description"] += ". Each strategy's: " + "; ".join(
        f"{name}: {', '.join(kind.options.model_fields) or 'none'}" for name, kind in TRAITS.items()
    )
    keys["replay"]["anyOf"] = [{"$ref": reference(ReplayOptions)}, {"type": "null"}]
    keys["replay"].pop("type", None)
    strategy["allOf"] = [strategy_rule(name, kind) for name, kind in TRAITS.items()]
    return {"$schema": DIALECT, **schema, "title": "pecft recipe"}


def reference(model: type[Section]) -> str:
    return f"#/$defs/{model.__name__}"


def add_definition(defs: dict[str, Any], model: type[Section]) -> None:
    """Put a section's schema (and any section it holds) beside the recipe's own."""
    schema = model.model_json_schema()
    defs.update(schema.pop("$defs", {}))
    defs[model.__name__] = schema


def strategy_rule(name: str, kind: Traits) -> dict[str, Any]:
    """When `strategy.name` is `name`: its options, and replay or routing only if it takes them.
    The default strategy's rule also holds when no name is given."""
    condition: dict[str, Any] = {"properties": {"name": {"const": name}}}
    if name != StrategySection.model_fields["name"].default:
        condition["required"] = ["name"]
    keys: dict[str, Any] = {"options": {"$ref": reference(kind.options)}}
    if not kind.takes_replay:
        keys["replay"] = {"type": "null"}
    if not kind.routes:
        keys["routing"] = {"const": "none"}
    return {"if": condition, "then": {"properties": keys}}
