"""What a command shows while it works: live progress on a terminal, plain log lines otherwise.

Progress and messages go to stderr, so stdout carries only results (tables, or JSON).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pecft_cli.cli.tables import confusion_table, matrix_table, metrics_table, routing_table
from pecft_cli.runfolder.state import RunState

# Off a terminal (logs, pipes) rich would wrap at 80 columns and cut task names short.
LOG_WIDTH = 160
out = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else LOG_WIDTH)


def eta(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class TrainProgress:
    """Renders the task loop's events: a rich progress bar on a terminal, log lines elsewhere."""

    def __init__(self, console: Console = err) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.bar: Any = None
        self.task_started = 0.0

    def __enter__(self) -> TrainProgress:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("step {task.completed}/{task.total}"),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "status":
            self.line(fields["message"])
        elif kind == "warning":
            self.line(f"warning: {fields['message']}")
        elif kind == "task_start":
            self.task_started = time.perf_counter()
            label = f"task {fields['index'] + 1}/{fields['total']} {fields['task']}"
            self.line(f"{label}: {fields['examples']} examples, {fields['steps']} steps")
            if self.progress is not None:
                self.bar = self.progress.add_task(label, total=fields["steps"], stats="")
        elif kind == "step":
            stats = (
                f"loss {fields['loss']:.4f}  lr {fields['lr']:.2e}  "
                f"{fields['tokens_per_s']:.0f} tok/s"
            )
            if self.progress is not None:
                self.progress.update(self.bar, completed=fields["step"], stats=stats)
            else:
                spent = time.perf_counter() - self.task_started
                remaining = spent / fields["step"] * (fields["steps"] - fields["step"])
                self.line(
                    f"{fields['task']} step {fields['step']}/{fields['steps']}  {stats}  "
                    f"ETA {eta(remaining)}"
                )
        elif kind == "task_end":
            if self.progress is not None:
                self.progress.remove_task(self.bar)
            self.line(
                f"{fields['task']}: trained in {fields['seconds']:.1f}s, loss "
                f"{fields['first_loss']:.4f} -> {fields['last_loss']:.4f}, "
                f"{fields['tokens_per_s']:.0f} tok/s"
            )
        elif kind == "eval":
            self.line(
                f"eval after {fields['stage']}: {fields['task']} {fields['metric']} = "
                f"{100 * fields['score']:.1f}% ({fields['seconds']:.1f}s)"
            )


def print_json(
    folder: Path,
    tasks: list[str],
    matrix: dict[str, list[float | None]],
    metrics: dict[str, Any] | None,
    **more: Any,
) -> None:
    """A run's results as one JSON document on stdout, for scripts."""
    document = {"folder": str(folder), "tasks": tasks, "matrix": matrix, "metrics": metrics}
    print(json.dumps(document | more, indent=2))


def show_results(
    tasks: list[str], matrix: dict[str, list[float | None]], metrics: dict[str, Any] | None
) -> None:
    out.print(matrix_table(tasks, matrix))
    if metrics is not None:
        out.print(metrics_table(metrics))


def show_routing(state: RunState) -> None:
    """A routed run's routing accuracy per stage and where each task's inputs went at the
    last stage scored; nothing for a run without a router."""
    if not (state.routing_accuracy or state.routing_estimate):
        return
    out.print(routing_table(state.routing_accuracy, state.routing_estimate))
    if state.routing_confusion:
        last = list(state.routing_confusion)[-1]
        out.print(confusion_table(last, state.routing_confusion[last]))
