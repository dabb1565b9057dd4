"""`pecft report`: one run's matrix and metrics, or several runs compared."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pecft_cli.cli.console import out, print_json, show_results, show_routing
from pecft_cli.cli.options import JsonOption
from pecft_cli.cli.tables import (
    comparison_table,
    matrix_table,
    merges_table,
)
from pecft_cli.errors import PecftError


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One run folder, or several to compare.")],
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
) -> None:
    """Show one run's matrix and metrics (and redraw eval/matrix.png), or compare several runs."""
    from pecft_cli.evaluation.report import SUMMARY_FIELDS, read_results

    if as_json and as_csv:
        raise PecftError("--json and --csv: choose one output format.")
    reports = [read_results(path) for path in run_dirs]
    if len(reports) == 1 and not as_csv:
        (one,) = reports
        one.redraw_heatmap()
        if as_json:
            general = (
                dict(zip(("tasks", "matrix"), one.harness, strict=True)) if one.harness else None
            )
            print_json(
                one.folder, one.tasks, one.matrix, one.metrics, merges=one.merges, harness=general
            )
            return
        show_results(one.tasks, one.matrix, one.metrics)
        if one.harness:
            out.print(matrix_table(*one.harness, title="General ability (lm-eval-harness, %)"))
        show_routing(one.run.state)
        if one.merges:
            out.print(merges_table(one.tasks, one.last_stage(), one.merges))
        return
    summaries = [r.summary() for r in reports]
    if as_json:
        print(json.dumps(summaries, indent=2))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(summaries)
    else:
        out.print(comparison_table(summaries))
