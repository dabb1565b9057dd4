"""`pecft schema`: the recipe's JSON Schema, for editors' completion and other tools.

It loads no model library, so an editor or a CI step can call it cheaply.
"""

from __future__ import annotations

import json

from pecft_cli.recipe.json_schema import recipe_json_schema


def schema() -> None:
    """Print the recipe's JSON Schema: every key with its help, and each strategy's options."""
    print(json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False))
