"""Prompt and target templates: literal text with `{field}` placeholders, nothing more.

A template names row fields and nothing else: no format specs, conversions, brackets or attribute
access, which would let a recipe run Python's format machinery (a `{x:>999999999}` builds a
gigabyte string). A dotted placeholder picks inside a field by key or position, as data, never as
an attribute: `{answers.text.0}` is the first item of the `text` list in the `answers` object.
`{{` and `}}` write literal braces. Templates are parsed here, once, by hand; `pecft_cli.data`
fills them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pecft_cli.errors import short_text

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Field:
    """A `{name}` placeholder, or a dotted `{name.key.0}` one that picks inside a field."""

    name: str

    @property
    def path(self) -> list[str]:
        """The field, then each key or position picked inside it."""
        return self.name.split(".")


def parse_template(template: str) -> list[str | Field]:
    """The template as literal pieces and placeholders; ValueError names the first bad one."""
    parts: list[str | Field] = []
    at = 0
    for match in _TOKEN.finditer(template):
        parts.append(template[at : match.start()])
        at = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif match.group(1) is None:
            raise ValueError(
                f"a single '{token}' at character {match.start() + 1} opens or closes no "
                "placeholder; write literal braces as {{ and }}"
            )
        elif not is_field_path(match.group(1)):
            raise ValueError(placeholder_problem(match.group(1)))
        else:
            parts.append(Field(match.group(1)))
    parts.append(template[at:])
    return [part for part in parts if part != ""]


def is_field_path(inside: str) -> bool:
    """A field name, then any number of `.key` (a name) or `.position` (digits)."""
    first, *rest = inside.split(".")
    return first.isidentifier() and all(
        p.isidentifier() or (p.isascii() and p.isdigit()) for p in rest
    )


def placeholder_problem(inside: str) -> str:
    """Why `{inside}` is not a placeholder, in words a recipe author acts on."""
    shown = "{" + short_text(inside, 40) + "}"
    if not inside.strip():
        kind = "is empty"
    elif "!" in inside:
        kind = "has a conversion (!...), which templates do not take"
    elif ":" in inside:
        kind = "has a format spec (:...), which templates do not take"
    elif "[" in inside:
        kind = "indexes with brackets, which templates do not do (pick with a dot: {name.0})"
    else:
        kind = "is not a field name"
    return (
        f"placeholder '{shown}' {kind}; write {{name}} with letters, digits and '_', or "
        "{name.key.0} to pick inside a field"
    )


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order; ValueError for a malformed template."""
    return [part.name for part in parse_template(template) if isinstance(part, Field)]
