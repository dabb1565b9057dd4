"""A recipe file read into a `Recipe`: YAML, `--set` overrides, validation, resolved paths.

`--set dotted.key=value` overrides are applied to the raw mapping and typed by the same schema;
every problem becomes one paragraph that names the key, the bad value and what would be valid.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ValidationError

from pecft_cli.errors import PecftError, did_you_mean, short, short_text
from pecft_cli.recipe.schema import Recipe, output_dir
from pecft_cli.recipe.strategies import check_strategy

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; data paths become absolute, relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise PecftError(f"{path}: no such recipe file. Give the path of a recipe YAML file.")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise PecftError(
            f"{path}: {path.stat().st_size:,} bytes is too large for a recipe (at most "
            f"{MAX_RECIPE_BYTES:,}); a recipe names its data files rather than holding the data."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PecftError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except RecursionError:
        raise PecftError(
            f"{path}: the YAML is nested too deeply to read; a recipe is a few levels deep."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PecftError(f"{path}: not valid YAML{where}: {problem}.") from None
    if not isinstance(raw, dict):
        raise PecftError(
            f"{path}: a recipe is a YAML mapping with keys such as name, model and tasks; "
            f"this file holds {type(raw).__name__}."
        )
    for item in overrides or []:
        apply_override(raw, item)
    recipe = validate_recipe(raw, source=str(path))
    return resolve_paths(recipe, path.parent.resolve())


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw mapping into a Recipe, turning pydantic's errors into one clear paragraph."""
    check_size(raw, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise PecftError(f"{source}: {newer_pecft(raw)}" + explain(exc, raw)) from None

    try:
        tasks = [task.name for task in recipe.tasks]
        check_strategy(recipe.strategy, tasks, recipe.model.quantization.mode)
    except PecftError as exc:
        raise PecftError(f"{source}: {exc}") from None
    return recipe


MAX_RECIPE_BYTES = 1_000_000
MAX_RECIPE_VALUES = 100_000


def check_size(raw: Any, source: str) -> None:
    """Refuse a recipe whose YAML aliases expand it past any real recipe's size, before anything
    walks it whole: a dozen lines of nested aliases can stand for billions of values."""
    count, pending = 0, [raw]
    while pending:
        node = pending.pop()
        count += 1
        if count > MAX_RECIPE_VALUES:
            raise PecftError(
                f"{source}: the recipe holds more than {MAX_RECIPE_VALUES:,} values once its YAML "
                "aliases (*name) are expanded; a recipe has a few hundred. Write the repeated "
                "parts out or shorten them."
            )
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def newer_pecft(raw: dict[str, Any]) -> str:
    """A first sentence for a recipe written by a newer pecft, which may use keys unknown here."""
    from packaging.version import InvalidVersion, Version

    from pecft_cli import __version__

    written = raw.get("pecft_version")
    try:
        newer = written is not None and Version(str(written)) > Version(__version__)
    except InvalidVersion:
        return ""
    if not newer:
        return ""
    return (
        f"this recipe was written by pecft {written}, newer than this pecft {__version__}; "
        "upgrade pecft (pip install -U pecft-cli) to use it. "
    )


def explain(exc: ValidationError, raw: Any) -> str:
    """One sentence per problem, each naming the key path, the bad value and what is valid."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        where = short_text(dotted(loc), 120) or "(top level)"
        if err["type"] == "extra_forbidden":
            model = model_at(Recipe, loc[:-1])
            valid = sorted(model.model_fields) if model else []
            hint = did_you_mean(str(loc[-1]), valid)
            lines.append(f"{where}: unknown key{hint or '.'} Valid keys here: {', '.join(valid)}.")
        elif err["type"] == "missing":
            lines.append(f"{where}: required key is missing.")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {short(value)})"
            message = short_text(err["msg"].removeprefix("Value error, "))
            lines.append(f"{where}: {message}{shown}.")
    unique = list(dict.fromkeys(lines))
    more = f" ... and {len(unique) - 5} more problems." if len(unique) > 5 else ""
    return " ".join(unique[:5]) + more


def dotted(loc: tuple[Any, ...]) -> str:
    """`('tasks', 0, 'prompt')` -> `tasks[0].prompt`, skipping pydantic's union branch tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("list[", "literal[")) or part in _TAGS):
            continue
        else:
            out += f".{part}" if out else part
    return out


_TAGS = {"str", "int", "float", "bool", "none"}


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The recipe section class found by walking a key path through the schema."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = section_type(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def section_type(annotation: Any) -> Any:
    """The BaseModel inside `X`, `list[X]`, `X | None` or `Annotated[...]`, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_type(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def takes_text(annotation: Any) -> bool:
    """Whether a field is plain text, so an override value is kept as written."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return all(takes_text(a) for a in args)
    return False


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` to the raw recipe mapping, checking the path against the schema.

    List items are addressed by index (`tasks.0.lr`) or, for tasks, by name (`tasks.qa.lr`).
    The value is read as YAML (numbers, booleans, lists) unless the key holds plain text.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise PecftError(
            f"--set {short(item)}: write an override as dotted.key=value, for example "
            "--set training.lr=1e-4 or --set tasks.0.training.epochs=2."
        )
    parts = key.strip().split(".")
    shown = short_text(key.strip(), 80)
    node: Any = raw
    model: Any = Recipe
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            index = list_index(node, part, here)
            if last:
                raise PecftError(
                    f"--set {shown}: cannot replace a whole list item; set one of its keys."
                )
            node = node[index]
            continue
        annotation = key_annotation(model, node, parts, i, shown)
        if not isinstance(node, dict):
            raise PecftError(
                f"--set {shown}: '{'.'.join(parts[:i])}' is not a mapping in the recipe."
            )
        if last:
            node[part] = text if takes_text(annotation) else parse_value(text)
            return
        if part not in node or node[part] is None:
            if typing.get_origin(annotation) is list or "list" in str(annotation):
                raise PecftError(f"--set {shown}: the recipe has no '{here}' list to index into.")
            node[part] = {}
        node = node[part]
        model = section_type(annotation)


def key_annotation(model: Any, node: Any, parts: list[str], i: int, shown: str) -> Any:
    """The type the schema gives key `parts[i]` under `model`; any value for a free mapping's
    last key (such as strategy.options.*)."""
    part, last = parts[i], i == len(parts) - 1
    fields = (
        model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else None
    )
    if fields is None:
        if isinstance(node, dict) and last:
            return Any
        raise PecftError(f"--set {shown}: '{parts[i - 1]}' holds a value, not keys.")
    if part not in fields:
        raise PecftError(
            f"--set {shown}: unknown key '{short_text(part, 60)}'"
            f"{did_you_mean(part, list(fields))} "
            f"Valid keys at {'.'.join(parts[:i]) or 'the top level'}: {', '.join(fields)}."
        )
    return fields[part].annotation


def list_index(items: list[Any], part: str, where: str) -> int:
    """A list position given as an index or, for named items such as tasks, as a name."""
    if part.lstrip("-").isdigit():
        index = int(part)
        if 0 <= index < len(items):
            return index
        raise PecftError(
            f"--set: {short_text(where, 80)}: index {index} is out of range (0..{len(items) - 1})."
        )
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    raise PecftError(
        f"--set: {short_text(where, 80)}: no item named '{short_text(part, 60)}'"
        f"{did_you_mean(part, [n for n in names if n])} "
        f"Use an index 0..{len(items) - 1} or one of: {', '.join(str(n) for n in names)}."
    )


def parse_value(text: str) -> Any:
    """Read an override value as YAML; `1e-4` counts as a number, as a user means it."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value) else value
        except ValueError:
            return value
    return value


def is_local(reference: str, base: Path) -> bool:
    """Whether a data or model reference names a local path rather than a hub id or split."""
    candidate = Path(reference).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return (
        candidate.exists()
        or reference.startswith(("/", "./", "../", "~"))
        or reference.lower().endswith(DATA_EXTENSIONS + (".gguf",))
    )


def absolute(reference: str, base: Path) -> str:
    path = Path(reference).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make local data and model paths absolute, relative to the recipe's folder."""
    model = recipe.model
    if not model.path.startswith("package://") and is_local(model.path, base):
        model.path = absolute(model.path, base)
    for task in recipe.tasks:
        if task.source is not None:
            if is_local(task.source, base):
                task.source = absolute(task.source, base)
        else:
            task.train = absolute(task.train, base)
            task.eval = absolute(task.eval, base)
    evaluation = recipe.evaluation
    evaluation.harness = [
        absolute(name, base) if name.lower().endswith((".yaml", ".yml")) else name
        for name in evaluation.harness
    ]
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML that `pecft train` accepts as it is."""
    from pecft_cli import __version__

    data = recipe.model_dump(mode="json")
    data["pecft_version"] = __version__
    data["output_dir"] = str(output_dir(recipe))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
