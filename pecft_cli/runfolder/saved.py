"""A finished or stopped run read back from its folder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.schema import Recipe
from pecft_cli.runfolder.atomic import read_json_file
from pecft_cli.runfolder.layout import BASE, FORMAT_VERSION, RunFolder
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.runfolder.state import RunState


@dataclass
class SavedRun:
    """A run folder read back from disk: its state, and what its stages left there."""

    folder: RunFolder
    state: RunState

    @property
    def tasks(self) -> list[str]:
        return self.state.tasks

    @cached_property
    def recipe(self) -> Recipe:
        """The recipe the run was trained with, parsed once."""
        return load_recipe(self.folder.recipe)

    @property
    def adapters(self) -> dict[str, Path]:
        """The adapter folder of every trained stage that has one on disk, in stage order."""
        found = {}
        for index, stage in enumerate(self.state.planned_stages):
            adapter = self.folder.adapter(index, stage)
            if (adapter / "adapter_config.json").is_file():
                found[stage] = adapter
        return found

    @property
    def stages(self) -> list[str]:
        """The rows a model can be scored at: the base, then each stage with an adapter."""
        return [BASE, *self.adapters]

    def matrix(self) -> tuple[list[str], dict[str, list[float | None]]]:
        """The evaluation matrix training wrote: its task columns and stage rows."""
        if not self.folder.matrix.is_file():
            raise PecftError(f"{self.folder.root}: the run has no eval/matrix.csv yet.")
        return read_matrix(self.folder.matrix)

    def merges(self, tasks: list[str]) -> dict[str, list[float | None]]:
        """The rows of eval/merges.csv, which must have the matrix's task columns."""
        if not self.folder.merges.is_file():
            return {}
        columns, rows = read_matrix(self.folder.merges, key="merge")
        if columns != tasks:
            raise PecftError(
                f"{self.folder.merges}: its tasks ({', '.join(columns)}) are not the matrix's "
                f"({', '.join(tasks)}); delete it and score the merges again with --eval."
            )
        return rows

    def last_stage(
        self, matrix: dict[str, list[float | None]]
    ) -> tuple[str, list[float | None]] | None:
        """The row of the last trained stage the matrix holds, if any."""
        stages = [s for s in self.state.planned_stages if s in matrix]
        return (stages[-1], matrix[stages[-1]]) if stages else None


def open_run(path: Path) -> SavedRun:
    """Check that `path` is a pecft run folder this version can read."""
    folder = RunFolder(path.resolve())
    if not path.is_dir():
        raise PecftError(f"{path}: no such run folder. Give the output_dir of a `pecft train` run.")
    data = read_json_file(folder.state)
    if data is None:
        raise PecftError(
            f"{path}: not a pecft run folder (it has no run.json). Give the output_dir of a "
            "`pecft train` run."
        )
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise PecftError(
            f"{folder.state}: run folder format {short(version)} is not one this pecft reads "
            f"(format {FORMAT_VERSION}); use the pecft version that wrote it."
        )
    if not folder.recipe.is_file():
        raise PecftError(f"{path}: the run folder is incomplete: recipe.yaml is missing.")
    return SavedRun(folder, RunState.from_json(data, folder.state))


def pick(requested: list[str] | None, available: list[str], what: str, where: Path) -> list[str]:
    """The requested names (or, for stages, numbers) in run order; all when none are given."""
    if not requested:
        return available
    chosen = set()
    for item in requested:
        name = item.strip()
        if name.isdigit() and what == "stage" and 0 <= int(name) < len(available):
            name = available[int(name)]
        if name not in available:
            raise PecftError(
                f"--{what}s {item}: {where} has no {what} '{item}'"
                f"{did_you_mean(item, available) or '.'} Valid: {', '.join(available)}."
            )
        chosen.add(name)
    return [name for name in available if name in chosen]
