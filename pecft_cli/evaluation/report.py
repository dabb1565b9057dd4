"""What `pecft report` reads: a run's matrix, metrics and merged results, and a summary row per
run for comparing several (`pecft_cli.cli.tables` renders them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pecft_cli.errors import PecftError
from pecft_cli.runfolder.atomic import read_json_file
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.runfolder.state import read_state
from pecft_cli.scoring.heatmap import save_heatmap
from pecft_cli.scoring.metrics import matrix_metrics

SUMMARY_FIELDS = (
    "run",
    "name",
    "strategy",
    "status",
    "tasks",
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    "learning_accuracy",
    "trainable_parameters",
    "wall_seconds",
)
Matrix = dict[str, list[float | None]]


@dataclass
class Results:
    """A run's scores as read back from its folder."""

    run: SavedRun
    tasks: list[str]
    matrix: Matrix
    metrics: dict[str, Any] | None
    merges: Matrix
    harness: tuple[list[str], Matrix] | None = None  # evaluation.harness: its names and rows

    @property
    def folder(self) -> Path:
        return self.run.folder.root

    def last_stage(self) -> tuple[str, list[float | None]] | None:
        return self.run.last_stage(self.matrix)

    def redraw_heatmap(self) -> None:
        """Render eval/matrix.png again from the matrix on disk."""
        save_heatmap(self.run.folder.heatmap, self.tasks, self.matrix, self.folder.name)

    def summary(self) -> dict[str, Any]:
        """One flat row for comparing runs; metrics are None until the run has them."""
        metrics, state = self.metrics or {}, self.run.state
        return {
            "run": str(self.folder),
            "name": state.name,
            "strategy": state.strategy,
            "status": state.status,
            "tasks": len(self.tasks),
            **{key: metrics.get(key) for key in SUMMARY_FIELDS[5:10]},
            "trainable_parameters": state.trainable_parameters,
            "wall_seconds": state.timings.wall_seconds,
        }


def read_results(path: Path) -> Results:
    """Read a run folder's matrix and metrics (computed from the matrix if not written)."""
    folder = RunFolder(path.resolve())
    state = read_state(folder)
    if state is None:
        raise PecftError(
            f"{path}: not a pecft run folder (no run.json). Give the output_dir of a "
            "`pecft train` run."
        )
    if not folder.matrix.is_file():
        raise PecftError(f"{path}: the run has no eval/matrix.csv yet; nothing to report.")
    saved = SavedRun(folder, state)
    tasks, matrix = saved.matrix()
    metrics = read_json_file(folder.metrics)
    if metrics is None:
        metrics = matrix_metrics(tasks, state.planned_stages, matrix)
    harness = folder.eval.harness
    general = read_matrix(harness) if harness.is_file() else None
    return Results(saved, tasks, matrix, metrics, saved.merges(tasks), general)
