"""The `pecft` command line: parse, call the library, render. Nothing else lives here.

Exit codes: 0 success, 2 bad input (recipe, data, model or run folder; one paragraph on stderr,
no traceback), 1 anything else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from pecft_cli import __version__
from pecft_cli.console import TrainProgress, err, out
from pecft_cli.errors import PecftError

app = typer.Typer(
    name="pecft",
    help="Parameter-efficient continual fine-tuning: LoRA task by task, with an evaluation matrix.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BAD_INPUT = 2

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable)."),
]


def reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn bad input into one paragraph on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except PecftError as exc:
            err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
            raise typer.Exit(BAD_INPUT) from None

    return wrapper


def quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of pecft's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.callback(invoke_without_command=True)
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"pecft {__version__}")
        raise typer.Exit()


@app.command()
@reports_errors
def validate(recipe: RecipeArg, set_: SetOption = None) -> None:
    """Check a recipe and its data and show each task's first example as the model sees it."""
    quiet_libraries()
    from pecft_cli.model import load_tokenizer
    from pecft_cli.recipe import load_recipe, output_dir
    from pecft_cli.train import prepare_tasks

    parsed = load_recipe(recipe, set_)
    tokenizer = load_tokenizer(parsed.model)
    tasks = prepare_tasks(parsed, tokenizer)
    out.print(
        f"[bold]{parsed.name}[/]: {len(tasks)} tasks, strategy {parsed.strategy.name}, "
        f"output {output_dir(parsed)}"
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
        out.print(f"   prompt: {tokenizer.decode(first.prompt_ids)!r}", highlight=False)
        out.print(f"   target: {tokenizer.decode(first.target_ids)!r}", highlight=False)
        out.print(example_tokens(tokenizer, first.prompt_ids, first.target_ids))
        if first.choices:
            out.print(f"   choices: {first.choices}", highlight=False)
    out.print("\n[green]valid[/]")


def example_tokens(tokenizer: Any, prompt_ids: list[int], target_ids: list[int]) -> Text:
    """Prompt and target tokens, each token visible, the target bracketed and highlighted."""
    text = Text("   ")
    for piece in tokenizer.convert_ids_to_tokens(prompt_ids):
        text.append(piece, style="dim")
        text.append("·", style="dim")
    text.append("⟦", style="bold")
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(target_ids)):
        text.append(("·" if i else "") + piece, style="bold green")
    text.append("⟧", style="bold")
    return text


@app.command()
@reports_errors
def train(
    recipe: RecipeArg,
    set_: SetOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the output folder.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
    ] = False,
) -> None:
    """Train the recipe's tasks in order; write adapters, the evaluation matrix and metrics."""
    quiet_libraries()
    from pecft_cli.recipe import load_recipe
    from pecft_cli.report import matrix_table, metrics_table
    from pecft_cli.train import run

    parsed = load_recipe(recipe, set_)
    with TrainProgress() as progress:
        result = run(parsed, overwrite=overwrite, on_event=progress)
    if as_json:
        print(
            json.dumps(
                {
                    "folder": str(result.folder),
                    "tasks": result.tasks,
                    "matrix": result.matrix,
                    "metrics": result.metrics,
                },
                indent=2,
            )
        )
        return
    out.print(matrix_table(result.tasks, result.matrix))
    out.print(metrics_table(result.metrics))
    out.print(
        f"run folder: {result.folder} ({result.state['timings']['wall_seconds']:.0f}s)",
        highlight=False,
    )


def main() -> None:
    app()
