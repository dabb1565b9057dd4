"""The recipe reference: help on every key, and docs/recipe.md as the schema renders it now."""

import typing
from pathlib import Path

from pydantic import BaseModel

from pecft_cli.recipe import schema, sections, strategies
from pecft_cli.recipe.reference import COMMAND, markdown
from pecft_cli.recipe.schema import Recipe
from pecft_cli.recipe.sections import ROUTING, StrategySection
from pecft_cli.recipe.strategies import TRAITS

ROOT = Path(__file__).resolve().parents[2]


def all_sections() -> list[type[BaseModel]]:
    return [
        value
        for module in (sections, schema, strategies)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, sections.Section)
    ]


def test_every_key_of_every_section_has_help() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in all_sections()
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert len(all_sections()) > 15
    assert not missing, missing


def test_every_routing_mode_has_help() -> None:
    modes = typing.get_args(StrategySection.model_fields["routing"].annotation)
    assert list(ROUTING) == list(modes)


def test_docs_recipe_md_is_what_the_schema_renders_now() -> None:
    written = (ROOT / "docs/recipe.md").read_text(encoding="utf-8")
    assert written == markdown(), f"docs/recipe.md is out of date; run `{COMMAND}`"


def test_the_reference_names_every_key_strategy_option_and_mode() -> None:
    text = markdown()
    for name in Recipe.model_fields:
        assert f"| `{name}` |" in text
    for path in ("model.quantization.quant_type", "tasks[].per_class.seed", "strategy.arrow.top_k"):
        assert f"| `{path}` |" in text
    for name, kind in TRAITS.items():
        assert f"### `{name}`" in text
        for option in kind.options.model_fields:
            assert f"| `{option}` |" in text
    for mode in ROUTING:
        assert f"| `{mode}` |" in text
