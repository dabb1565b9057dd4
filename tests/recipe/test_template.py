"""Templates: `{field}` placeholders and `{{`/`}}` escapes, nothing of Python's format language."""

import pytest

from pecft_cli.recipe.template import fill, template_fields


def test_fields_and_escapes() -> None:
    assert template_fields("Q: {question} {{literal}} A:") == ["question"]
    row = {"question": "Why?", "n": 3}
    assert fill("Q: {question} {{literal}} {n} A:", row) == "Q: Why? {literal} 3 A:"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{x:>999999999}", "has a format spec"),
        ("{x!r}", "has a conversion"),
        ("{x[0]}", "indexes or reads an attribute"),
        ("{x.__class__}", "indexes or reads an attribute"),
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
