"""What `pecft report` shows: one run's matrix and metrics, or several runs side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pecft_cli import runs
from pecft_cli.errors import PecftError
from pecft_cli.eval_run import matrix_metrics, run_stages
from pecft_cli.plot import save_heatmap

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


@dataclass
class RunReport:
    """A run folder's results as read back from disk."""

    folder: Path
    state: dict[str, Any]
    tasks: list[str]
    matrix: dict[str, list[float | None]]
    metrics: dict[str, Any] | None
    merges: dict[str, list[float | None]]

    def last_stage(self) -> tuple[str, list[float | None]] | None:
        """The row of the last trained stage the matrix holds, if any."""
        stages = [s for s in run_stages(self.state, self.tasks) if s in self.matrix]
        return (stages[-1], self.matrix[stages[-1]]) if stages else None

    def redraw_heatmap(self) -> None:
        """Render eval/matrix.png again from the matrix on disk."""
        save_heatmap(runs.RunFolder(self.folder).heatmap, self.tasks, self.matrix, self.folder.name)

    def summary(self) -> dict[str, Any]:
        """One flat row for comparing runs; metrics are None until the run has them."""
        metrics = self.metrics or {}
        return {
            "run": str(self.folder),
            "name": self.state.get("name"),
            "strategy": self.state.get("strategy"),
            "status": self.state.get("status"),
            "tasks": len(self.tasks),
            **{key: metrics.get(key) for key in SUMMARY_FIELDS[5:10]},
            "trainable_parameters": self.state.get("trainable_parameters"),
            "wall_seconds": self.state.get("timings", {}).get("wall_seconds"),
        }


def read_run(path: Path) -> RunReport:
    """Read a run folder's state, matrix and metrics (computed from the matrix if not written)."""
    folder = runs.RunFolder(path.resolve())
    state = runs.read_state(folder)
    if state is None:
        raise PecftError(
            f"{path}: not a pecft run folder (no run.json). Give the output_dir of a "
            "`pecft train` run."
        )
    if not folder.matrix.is_file():
        raise PecftError(f"{path}: the run has no eval/matrix.csv yet; nothing to report.")
    tasks, matrix = runs.read_matrix(folder.matrix)
    metrics = runs.read_json_file(folder.metrics)
    if metrics is None:
        metrics = matrix_metrics(tasks, run_stages(state, tasks), matrix)
    merges: dict[str, list[float | None]] = {}
    if folder.merges.is_file():
        columns, merges = runs.read_matrix(folder.merges, key="merge")
        if columns != tasks:
            raise PecftError(
                f"{folder.merges}: its tasks ({', '.join(columns)}) are not the matrix's "
                f"({', '.join(tasks)}); delete it and score the merges again with --eval."
            )
    return RunReport(folder.root, state, tasks, matrix, metrics, merges)
