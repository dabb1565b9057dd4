"""`pecft train`: train a recipe's tasks in order, in one process or several."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pecft_cli.cli.console import TrainProgress, err, out, print_json, show_results, show_routing
from pecft_cli.cli.exits import (
    BAD_INPUT,
    DIVERGED,
    PREEMPTED,
    RANK_DIED,
    fail,
    is_main_process,
    quiet_libraries,
    read_data,
)
from pecft_cli.cli.options import JsonOption, RecipeArg, SetOption, TrustOption
from pecft_cli.errors import Diverged, Preempted, RankDied
from pecft_cli.runfolder.state import Timings

if TYPE_CHECKING:
    from pecft_cli.recipe.schema import Recipe


def train(
    recipe: RecipeArg,
    set_: SetOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the output folder.")
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes", help="Train with N processes (GPUs; gloo ranks on a CPU host)."
        ),
    ] = 1,
    fsdp: Annotated[
        bool,
        typer.Option(
            "--fsdp",
            help="With --num-processes: shard the base model across the processes (FSDP2).",
        ),
    ] = False,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Train the recipe's tasks in order; write adapters, the evaluation matrix and metrics.

    Running the same command on an unfinished run resumes it; on a finished one it says so.
    """
    from pecft_cli.recipe.load import load_recipe

    parsed = load_recipe(recipe, set_)
    rendered = read_data(parsed)
    quiet_libraries()
    from pecft_cli.training.loop import run

    if "WORLD_SIZE" not in os.environ and (num_processes != 1 or fsdp):
        raise typer.Exit(train_relaunched(parsed, num_processes, fsdp))
    with TrainProgress() as progress:
        try:
            result = run(
                parsed,
                overwrite=overwrite,
                trust_remote_code=trust_remote_code,
                on_event=progress,
                rendered=rendered,
            )
        except Preempted as exc:
            err.print(
                f"stopped on request ({exc}); checkpoint saved. Run the same command again to "
                f"resume (exit code {PREEMPTED}).",
                highlight=False,
            )
            raise typer.Exit(PREEMPTED) from None
        except Diverged as exc:
            fail(str(exc), DIVERGED)
    if not is_main_process():
        return
    if as_json:
        print_json(
            result.folder,
            result.tasks,
            result.matrix,
            result.metrics,
            status=result.state.status,
            already_complete=result.already_complete,
        )
        return
    if result.already_complete:
        err.print(f"{result.folder}: this run is already complete; nothing to do.", highlight=False)
    show_results(result.tasks, result.matrix, result.metrics)
    show_routing(result.state)
    timings = time_split(result.state.timings)
    out.print(f"run folder: {result.folder} ({timings})", highlight=False)


def train_relaunched(recipe: Recipe, num_processes: int, fsdp: bool) -> int:
    """`pecft train` run again as N processes; the exit code the main one chose."""
    from pecft_cli.parallel.launch import relaunch

    if num_processes == 1:
        fail("--fsdp shards the model across processes; give --num-processes 2 or more.", BAD_INPUT)
    try:
        return relaunch(num_processes, sys.argv[1:], fsdp)
    except RankDied as exc:
        from pecft_cli.recipe.schema import output_dir
        from pecft_cli.runfolder.state import record_end

        record_end(output_dir(recipe), "process_died", str(exc))
        fail(str(exc), RANK_DIED)


def time_split(timings: Timings) -> str:
    """Wall time and how much of it went to training and to evaluation."""
    wall = timings.wall_seconds or 0.0
    train = sum(timings.train_seconds.values())
    evaluation = sum(timings.eval_seconds.values())
    share = f" = {evaluation / wall:.0%}" if wall else ""
    return f"{wall:.0f}s: training {train:.0f}s, evaluation {evaluation:.0f}s{share}"
