"""`pecft merge-adapters`: combine adapters with PEFT, or fold one into the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pecft_cli.cli.console import TrainProgress, out
from pecft_cli.cli.exits import quiet_libraries
from pecft_cli.cli.options import JsonOption, TrustOption, floats, names
from pecft_cli.cli.tables import merges_table


def merge_adapters(
    sources: Annotated[
        list[Path],
        typer.Argument(help="A run folder (its per-task adapters), or adapter folders."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist).")],
    method: Annotated[
        str, typer.Option("--method", help="PEFT combination: cat, svd, linear, ties, dare_*, ...")
    ] = "cat",
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", help="From a run: only these tasks' adapters.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="One weight per adapter, comma-separated.")
    ] = None,
    density: Annotated[
        float | None, typer.Option("--density", help="ties/dare/magnitude_prune: fraction kept.")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="svd methods: output rank.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for DARE's random pruning.")] = 0,
    into_base: Annotated[
        bool, typer.Option("--into-base", help="Write a whole model with the adapter folded in.")
    ] = False,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model, when the adapters do not say.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier merge in --out.")] = (
        False
    ),
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Score the result on the run's tasks.")
    ] = False,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Combine adapters into one (or fold them into the base model) with PEFT, and score it."""
    quiet_libraries()
    from pecft_cli.merging.merge import merge_adapters as merge
    from pecft_cli.merging.request import MergeOptions

    options = MergeOptions(
        method=method,
        tasks=names(tasks),
        weights=floats(weights, "--weights"),
        density=density,
        rank=rank,
        seed=seed,
        into_base=into_base,
        base=base,
        force=force,
        evaluate=evaluate,
    )
    with TrainProgress() as progress:
        result = merge(
            sources, out_dir, options, trust_remote_code=trust_remote_code, on_event=progress
        )
    show_merge(result, as_json)


def show_merge(result: Any, as_json: bool) -> None:
    """A merge's result: one JSON document, or a line on what was written and its scores."""
    record = result.record
    if as_json:
        last = result.last_stage
        document = {
            "out": str(result.out),
            "merge": record,
            "tasks": result.tasks,
            "scores": result.scores,
            "last_stage": {"stage": last[0], "scores": last[1]} if last else None,
        }
        print(json.dumps(document, indent=2))
        return
    what = "model" if record["into_base"] else f"adapter, rank {record['rank']}"
    how = f" with {record['method']}" if record["method"] else ""
    out.print(
        f"merged {len(record['inputs'])} adapter(s) ({record['input_kind']}){how} -> "
        f"{result.out} ({what})",
        highlight=False,
    )
    if record["base_reloaded_unquantized"]:
        out.print(
            f"the base was reloaded unquantized ({record['base']['dtype']}) to merge cleanly; "
            "the run trained on a quantized base",
            highlight=False,
        )
    if result.scores is not None:
        out.print(merges_table(result.tasks, result.last_stage, {result.out.name: result.scores}))
