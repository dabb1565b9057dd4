"""The arguments and options several commands share, and their parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pecft_cli.errors import PecftError

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable)."),
]


TrustOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let a model run its own Python code (its recipe must set trust_remote_code too).",
    ),
]


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]


RunArg = Annotated[Path, typer.Argument(help="Run folder (a `pecft train` output_dir).")]


def names(values: list[str] | None) -> list[str] | None:
    """`--tasks a,b --tasks c` -> [a, b, c]."""
    if not values:
        return None
    return [name for value in values for name in value.split(",") if name.strip()]


def floats(text: str | None, option: str) -> list[float] | None:
    """`0.5,0.25` -> [0.5, 0.25], or a clear error naming the option."""
    if text is None:
        return None
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise PecftError(
            f"{option} {text}: give comma-separated numbers, one per adapter, e.g. 0.5,0.5."
        ) from None
