"""Rich tables of an evaluation matrix, its metrics and compared runs (the caller prints them)."""

from __future__ import annotations

import os
from typing import Any

from rich.table import Table


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def matrix_table(
    tasks: list[str], matrix: dict[str, list[float | None]], title: str = "Evaluation matrix (%)"
) -> Table:
    """One row per stage (base, then after each task), one column per task, scores in percent."""
    table = Table(title=title, caption="row: after training that task")
    table.add_column("stage", style="bold")
    for task in tasks:
        table.add_column(task, justify="right")
    for stage, scores in matrix.items():
        table.add_row(stage, *(percent(s) for s in scores))
    return table


def mean(scores: list[float | None]) -> float | None:
    """The mean of a row, or None while any cell is missing."""
    if not scores or None in scores:
        return None
    return sum(s for s in scores if s is not None) / len(scores)


def merges_table(
    tasks: list[str],
    last_stage: tuple[str, list[float | None]] | None,
    merges: dict[str, list[float | None]],
) -> Table:
    """Merged results (`merge-adapters --eval`) under the run's last stage, with row means."""
    rows = {}
    if last_stage is not None:
        rows[f"after {last_stage[0]}"] = [*last_stage[1], mean(last_stage[1])]
    for name, scores in merges.items():
        rows[name] = [*scores, mean(scores)]
    table = matrix_table([*tasks, "mean"], rows, "Merged results vs the run's last stage (%)")
    table.caption = "rows below the first: merge-adapters outputs, by folder name"
    return table


def metrics_table(metrics: dict[str, Any]) -> Table:
    """The continual-learning summary: ACC, BWT, FWT, forgetting and learning accuracy."""
    table = Table(title="Continual-learning metrics (%)")
    for name in ("ACC", "BWT", "FWT", "Forgetting", "Learning acc."):
        table.add_column(name, justify="right")
    table.add_row(
        percent(metrics["acc"]),
        signed(metrics["bwt"]),
        signed(metrics["fwt"]),
        percent(metrics["forgetting"]),
        percent(metrics["learning_accuracy"]),
    )
    return table


def comparison_table(summaries: list[dict[str, Any]]) -> Table:
    """Several runs side by side: one row per run, its strategy and headline metrics."""
    table = Table(title="Runs compared (metrics in %)")
    for name in (
        "run",
        "strategy",
        "status",
        "ACC",
        "BWT",
        "FWT",
        "Forgetting",
        "trainable",
        "wall",
    ):
        table.add_column(name, justify="left" if name in ("run", "strategy", "status") else "right")
    for row in summaries:
        trainable = row["trainable_parameters"]
        wall = row["wall_seconds"]
        table.add_row(
            os.path.relpath(row["run"]),
            row["strategy"] or "-",
            row["status"] or "-",
            percent(row["acc"]),
            signed(row["bwt"]),
            signed(row["fwt"]),
            percent(row["forgetting"]),
            "-" if trainable is None else f"{trainable:,}",
            "-" if wall is None else f"{wall:.0f}s",
        )
    return table


def routing_table(accuracy: dict[str, float], estimate: dict[str, float]) -> Table:
    """How often the router sent a trained task's input to that task's LoRA, per stage, and
    its own estimate from held-out training prompts."""
    table = Table(title="Routing accuracy (%)", caption="inputs of the tasks trained so far")
    table.add_column("")
    stages = list(dict.fromkeys([*accuracy, *estimate]))
    for stage in stages:
        table.add_column(stage, justify="right")
    table.add_row("eval inputs", *(percent(accuracy.get(stage)) for stage in stages))
    if estimate:
        table.add_row("held-out estimate", *(percent(estimate.get(stage)) for stage in stages))
    return table


def confusion_table(stage: str, confusion: dict[str, dict[str, int]]) -> Table:
    """Where each task's eval inputs went after `stage`: a row per true task, a column per
    routed-to task, counts; the diagonal is what was routed right."""
    targets = list(dict.fromkeys([*confusion, *(t for row in confusion.values() for t in row)]))
    table = Table(
        title=f"Routing after {stage}",
        caption="rows: the input's task; columns: the task whose LoRA answered",
    )
    table.add_column("task")
    for target in targets:
        table.add_column(target, justify="right")
    for task, row in confusion.items():
        table.add_row(task, *(str(row.get(target, 0)) for target in targets))
    return table
