"""Templates: `{field}` placeholders and `{{`/`}}` escapes, nothing of Python's format language."""

import pytest

from pecft_cli.data.render import render
from pecft_cli.recipe.template import template_fields


def test_fields_and_escapes() -> None:
    assert template_fields("Q: {question} {{literal}} A:") == ["question"]
    row = {"question": "Why?", "n": 3}
    assert render("Q: {question} {{literal}} {n} A:", row, "", "") == "Q: Why? {literal} 3 A:"


def test_a_dotted_placeholder_picks_inside_a_field_as_data() -> None:
    assert template_fields("{answers.text.0} {x.__class__}") == ["answers.text.0", "x.__class__"]
    row = {"answers": {"text": ["Paris", "paris"]}, "x": {"__class__": "data"}}
    assert render("{answers.text.1}/{x.__class__}", row, "", "") == "paris/data"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{x:>999999999}", "has a format spec"),
        ("{x!r}", "has a conversion"),
        ("{x[0]}", "indexes with brackets"),
        ("{x.-1}", "is not a field name"),
        ("{x..y}", "is not a field name"),
        ("{0.x}", "is not a field name"),
        ("{}", "is empty"),
        ("{0}", "is not a field name"),
        ("a } b", "a single '}' at character 3"),
        ("{open", "a single '{' at character 1"),
    ],
)
def test_anything_but_a_field_name_is_refused(template: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        template_fields(template)


def test_a_long_placeholder_is_quoted_short() -> None:
    with pytest.raises(ValueError) as caught:
        template_fields("{" + "x" * 10_000 + ":}")
    assert len(str(caught.value)) < 200
