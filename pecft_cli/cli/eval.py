"""`pecft eval`: score a trained run again from its saved adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pecft_cli.cli.console import TrainProgress, out, print_json, show_results
from pecft_cli.cli.exits import is_main_process, quiet_libraries
from pecft_cli.cli.options import JsonOption, RunArg, TrustOption, names
from pecft_cli.cli.tables import matrix_table


def eval_(
    run_dir: RunArg,
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", help="Tasks to score (names, comma-separated).")
    ] = None,
    stages: Annotated[
        list[str] | None,
        typer.Option("--stages", help="Stages to score: base, task names, or numbers (0 = base)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Score at most this many examples per task.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Eval batch size.")] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Extra eval file (rows: prompt, target[, choices])."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write (default RUN_DIR/eval, or eval-limitN)."),
    ] = None,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Score a trained run again from its saved adapters; resumes an interrupted evaluation."""
    quiet_libraries()
    from pecft_cli.evaluation.rerun import EvalOptions, evaluate_run

    options = EvalOptions(
        tasks=names(tasks),
        stages=names(stages),
        limit=limit,
        batch_size=batch_size,
        data=data or [],
        out=out_dir,
    )
    with TrainProgress() as progress:
        result = evaluate_run(
            run_dir, options, trust_remote_code=trust_remote_code, on_event=progress
        )
    if not is_main_process():
        return
    if as_json:
        print_json(
            result.out,
            result.tasks,
            result.matrix,
            result.metrics,
            extra={"tasks": result.extra_names, "matrix": result.extra},
            resumed_cells=result.resumed_cells,
        )
        return
    show_results(result.tasks, result.matrix, result.metrics)
    if result.extra:
        out.print(matrix_table(result.extra_names, result.extra, "Extra eval sets (%)"))
    resumed = f", {result.resumed_cells} cells resumed" if result.resumed_cells else ""
    out.print(f"results: {result.out} ({result.seconds:.0f}s{resumed})", highlight=False)
