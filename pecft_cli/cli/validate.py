"""`pecft validate`: check a recipe and its data, and show each task's first example."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from pecft_cli.cli.console import out
from pecft_cli.cli.exits import quiet_libraries, read_data
from pecft_cli.cli.options import JsonOption, RecipeArg, SetOption, TrustOption
from pecft_cli.errors import short, short_text
from pecft_cli.recipe.reference import Setting, StrategyHelp, strategy_help

if TYPE_CHECKING:
    from pecft_cli.recipe.schema import Recipe
    from pecft_cli.training.preflight import Preflight

ExplainOption = Annotated[
    bool,
    typer.Option(
        "--explain",
        help="Also print the strategy's summary and each option's type, default, value and help, "
        "and the routing mode's help.",
    ),
]


def validate(
    recipe: RecipeArg,
    set_: SetOption = None,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
    explain: ExplainOption = False,
) -> None:
    """Check a recipe and its data and show each task's first example as the model sees it."""
    from pecft_cli.recipe.load import load_recipe
    from pecft_cli.recipe.schema import output_dir

    parsed = load_recipe(recipe, set_)
    rendered = read_data(parsed)
    quiet_libraries()
    from pecft_cli.model.load import load_tokenizer
    from pecft_cli.training.preflight import preflight

    tokenizer = load_tokenizer(parsed.model, trust_remote_code)
    checked = preflight(parsed, tokenizer, trust_remote_code=trust_remote_code, rendered=rendered)
    tasks, memory, disk = checked.tasks, checked.memory, checked.disk
    strategy = strategy_help(parsed.strategy) if explain else None
    if as_json:
        document = json_document(parsed, checked, tokenizer)
        if strategy is not None:
            document["explain"] = asdict(strategy)
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    out.print(
        f"[bold]{parsed.name}[/]: {len(tasks)} tasks, strategy {parsed.strategy.name}, "
        f"output {output_dir(parsed)}\nmemory: {memory.describe()}\ndisk: {disk.describe()}",
        highlight=False,
    )
    for index, task in enumerate(tasks, start=1):
        skipped = f" ({task.too_long} longer than max_length, skipped)" if task.too_long else ""
        limited = f" (scoring {len(task.eval)})" if len(task.eval) < task.eval_rows else ""
        out.print(
            f"\n[bold]{index}. {task.name}[/]  metric {task.metric}  "
            f"train {task.train_rows} rows{skipped}  eval {task.eval_rows} rows{limited}"
        )
        out.print(
            f"   train: {task.sources['train']}\n   eval:  {task.sources['eval']}", highlight=False
        )
        first = task.train[0]
        out.print("   first example (the loss covers the target only; tokens marked ⟦ ⟧):")
        out.print(f"   prompt: {short(tokenizer.decode(first.prompt_ids), 200)}", highlight=False)
        out.print(f"   target: {short(tokenizer.decode(first.target_ids), 200)}", highlight=False)
        out.print(example_tokens(tokenizer, first.prompt_ids, first.target_ids))
        if first.choices:
            spoken = [tokenizer.decode(ids) for ids in first.choice_ids or []]
            out.print(f"   choices: {spoken}", highlight=False)
    if strategy is not None:
        print_strategy(strategy)
    out.print("\n[green]valid[/]")


def json_document(parsed: Recipe, checked: Preflight, tokenizer: Any) -> dict[str, Any]:
    """What `validate --json` prints: the estimates and each task's sizes and first example."""
    from pecft_cli.recipe.schema import output_dir

    memory, disk = checked.memory, checked.disk
    return {
        "valid": True,
        "name": parsed.name,
        "strategy": parsed.strategy.name,
        "output_dir": str(output_dir(parsed)),
        "memory": {
            "lower_bound_bytes": memory.total,
            "weights_bytes": memory.weights,
            "lora_bytes": memory.lora,
            "activation_bytes": memory.activations,
            "capacity_bytes": memory.capacity,
        },
        "disk": {
            "lower_bound_bytes": disk.total,
            "adapters_bytes": disk.adapters,
            "task_loras_bytes": disk.task_loras,
            "checkpoint_bytes": disk.checkpoint,
            "free_bytes": disk.free,
        },
        "tasks": [
            {
                "name": task.name,
                "metric": task.metric,
                "train_rows": task.train_rows,
                "train_too_long": task.too_long,
                "eval_rows": task.eval_rows,
                "eval_scored": len(task.eval),
                "first_prompt": short_text(tokenizer.decode(task.train[0].prompt_ids), 1000),
                "first_target": short_text(tokenizer.decode(task.train[0].target_ids), 1000),
            }
            for task in checked.tasks
        ],
    }


def print_strategy(strategy: StrategyHelp) -> None:
    """The strategy, its options as set with their help, and the routing mode (--explain)."""
    out.print(f"\n[bold]strategy {strategy.name}[/]: {strategy.summary}", highlight=False)
    out.print(f"   {strategy.combines}", markup=False, highlight=False)
    groups = [("strategy.options", strategy.options), ("strategy.replay", strategy.replay)]
    for where, group in groups:
        if group is None:
            continue
        out.print(f"   {where}:" if group else f"   {where}: none (this strategy takes none)")
        for setting in group:
            print_setting(setting)
    if strategy.routing_help:
        out.print(f"   routing {strategy.routing}: {strategy.routing_help}", highlight=False)
    for setting in strategy.router or []:
        print_setting(setting)


def print_setting(setting: Setting) -> None:
    """`key = value  (default d; type, values)` and the key's help beneath."""
    key = setting.key
    facts = "; ".join(part for part in (f"default {key.default}", key.type, key.values) if part)
    out.print(f"     {key.path} = {setting.value}  ({facts})", markup=False, highlight=False)
    out.print(f"       {key.help}", markup=False, highlight=False)


SHOWN_TOKENS = 48  # of a long prompt, its end; of a long target, its start


def example_tokens(tokenizer: Any, prompt_ids: list[int], target_ids: list[int]) -> Text:
    """Prompt and target tokens, each token visible, the target bracketed and highlighted."""
    text = Text("   " + ("… " if len(prompt_ids) > SHOWN_TOKENS else ""))
    for piece in tokenizer.convert_ids_to_tokens(prompt_ids[-SHOWN_TOKENS:]):
        text.append(piece, style="dim")
        text.append("·", style="dim")
    text.append("⟦", style="bold")
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(target_ids[:SHOWN_TOKENS])):
        text.append(("·" if i else "") + piece, style="bold green")
    text.append("⟧", style="bold")
    return text
