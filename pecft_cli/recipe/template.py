"""Prompt and target templates: literal text with `{field}` placeholders, nothing more.

A template names row fields and nothing else: no format specs, conversions, indexing or attribute
access, which would let a recipe run Python's format machinery (a `{x:>999999999}` builds a
gigabyte string). `{{` and `}}` write literal braces. Templates are parsed here, once, by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pecft_cli.errors import short_text

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Field:
    """A `{name}` placeholder."""

    name: str


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
        elif not match.group(1).isidentifier():
            raise ValueError(placeholder_problem(match.group(1)))
        else:
            parts.append(Field(match.group(1)))
    parts.append(template[at:])
    return [part for part in parts if part != ""]


def placeholder_problem(inside: str) -> str:
    """Why `{inside}` is not a placeholder, in words a recipe author acts on."""
    shown = "{" + short_text(inside, 40) + "}"
    if not inside.strip():
        kind = "is empty"
    elif "!" in inside:
        kind = "has a conversion (!...), which templates do not take"
    elif ":" in inside:
        kind = "has a format spec (:...), which templates do not take"
    elif "[" in inside or "." in inside:
        kind = "indexes or reads an attribute, which templates do not do"
    else:
        kind = "is not a field name"
    return f"placeholder '{shown}' {kind}; write {{name}} with letters, digits and '_' only"


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order; ValueError for a malformed template."""
    return [part.name for part in parse_template(template) if isinstance(part, Field)]


def fill(template: str, row: dict[str, Any]) -> str:
    """The template with each placeholder replaced by its row value as text."""
    return "".join(
        str(row[part.name]) if isinstance(part, Field) else part
        for part in parse_template(template)
    )
