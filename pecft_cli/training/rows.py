"""The evaluation matrix while a run trains: a row scored after the base and after every stage,
answered through the run's routing mode (`pecft_cli.serving.routing`), and written as it comes.

Each process scores its share of the batches; scoring draws no random numbers that training
would see, so a resumed run trains on as an uninterrupted one does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pecft_cli.data.tasks import TaskData
from pecft_cli.errors import Preempted
from pecft_cli.parallel.distributed import cuda_devices
from pecft_cli.runfolder.atomic import write_jsonl
from pecft_cli.runfolder.layout import BASE
from pecft_cli.runfolder.matrix import read_matrix, write_matrix
from pecft_cli.scoring.harness import score_harness
from pecft_cli.scoring.heatmap import save_heatmap
from pecft_cli.scoring.scorer import TaskScore, score_shared
from pecft_cli.serving.experts import LiveExperts
from pecft_cli.serving.routing import routed_counts
from pecft_cli.strategies.base import Stage
from pecft_cli.training.context import RunContext

Matrix = dict[str, list[float | None]]


class MatrixRows:
    """The run's matrix and harness rows so far, and how the next row is scored."""

    def __init__(self, ctx: RunContext, stages: list[Stage], resumed: bool) -> None:
        self.ctx = ctx
        self.stages = stages
        self.matrix: Matrix = read_rows(ctx.folder.matrix, ctx.names) if resumed else {}
        self.harness: Matrix = {}  # evaluation.harness: a row of harness scores per stage
        if resumed and ctx.harness is not None:
            self.harness = read_rows(ctx.folder.eval.harness, ctx.harness.names)

    def score_base(self) -> None:
        """The base row, with the adapters off, unless an earlier attempt scored it."""
        if BASE in self.matrix:
            return
        with self.ctx.model.disable_adapter():
            self.matrix[BASE] = self.score_row(None)
            self.score_harness(BASE)
        self.write_matrix()

    def score_stage(self, stage: Stage) -> None:
        """The row after `stage`, written with its harness row."""
        self.matrix[stage.name] = self.score_row(stage)
        self.score_harness(stage.name)
        self.write_matrix()

    def score_row(self, stage: Stage | None) -> list[float | None]:
        """Every chosen task scored as the stage answers (None: the base); one matrix row."""
        ctx = self.ctx
        name = stage.name if stage is not None else BASE
        started = time.perf_counter()
        row: list[float | None] = []
        confusion: dict[str, dict[str, int]] = {}  # a trained task -> where its inputs went
        chosen = self.cells(stage)
        with torch.random.fork_rng(devices=cuda_devices(ctx.accelerator)):
            for index, task in enumerate(ctx.tasks):
                if index not in chosen:
                    row.append(None)
                    continue
                task_started = time.perf_counter()
                result = self.score_task(task, stage)
                counts = routed_counts(task.name, result, self.trained(stage))
                if counts:
                    confusion[task.name] = counts
                if ctx.main:
                    write_jsonl(ctx.folder.predictions(name, task.name), result.predictions)
                ctx.on_event("eval", result.event(name, time.perf_counter() - task_started))
                row.append(result.score)
                if ctx.stop.requested(ctx.accelerator):
                    raise Preempted(f"stopped while scoring after {name}")
        ctx.state.timings.eval_seconds[name] = round(time.perf_counter() - started, 2)
        if confusion:
            right = sum(counts.get(task, 0) for task, counts in confusion.items())
            total = sum(sum(counts.values()) for counts in confusion.values())
            ctx.state.routing_accuracy[name] = round(right / total, 6)
            ctx.state.routing_confusion[name] = confusion
        return row

    def trained(self, stage: Stage | None) -> list[str]:
        """The tasks trained by `stage`, in stage order."""
        done = self.stages[: stage.index + 1] if stage is not None else []
        return [self.ctx.names[i] for s in done for i in s.tasks]

    def score_task(self, task: TaskData, stage: Stage | None) -> TaskScore:
        """One task at one row, answered through the routing mode as it stood after `stage`."""
        ctx = self.ctx
        if stage is None:
            return self.scorer(ctx.model, task)
        experts = LiveExperts(ctx.model, ctx.strategy, self.stages, stage, ctx.names)
        routing = ctx.routing.at(stage.index + 1)
        return routing.score(experts, task, self.scorer)

    def scorer(self, model: Any, task: TaskData) -> TaskScore:
        ctx = self.ctx
        return score_shared(ctx.accelerator, model, ctx.tokenizer, task, ctx.recipe.evaluation)

    def score_harness(self, stage: str) -> None:
        """The harness tasks' row after `stage`, with the model as it stands (every process
        scores them, which a sharded model needs); written beside the matrix."""
        ctx = self.ctx
        if ctx.harness is None:
            return
        scores = score_harness(ctx.model, ctx.tokenizer, ctx.harness, ctx.recipe.evaluation)
        self.harness[stage] = list(scores)
        if ctx.main:
            eval_folder = ctx.folder.eval
            write_matrix(eval_folder.harness, ctx.harness.names, self.harness)
            title = f"{ctx.recipe.name}: harness"
            save_heatmap(eval_folder.harness_heatmap, ctx.harness.names, self.harness, title)

    def cells(self, stage: Stage | None) -> set[int]:
        """The tasks scored after `stage`: all of them, or with `evaluation.cells: sparse` the
        stage's own and the next stage's (every task at the base row, the last stage and each
        `full_every`-th), the cells the metrics need."""
        evaluation, everything = self.ctx.recipe.evaluation, set(range(len(self.ctx.tasks)))
        if evaluation.cells == "all" or stage is None:
            return everything
        every = evaluation.full_every
        index = stage.index
        if index == len(self.stages) - 1 or (every and (index + 1) % every == 0):
            return everything
        return {*self.stages[index].tasks, *self.stages[index + 1].tasks}

    def write_matrix(self) -> None:
        """The matrix as it stands: the CSV contract and its heatmap (main process only)."""
        ctx = self.ctx
        if ctx.main:
            write_matrix(ctx.folder.matrix, ctx.names, self.matrix)
            save_heatmap(ctx.folder.heatmap, ctx.names, self.matrix, ctx.recipe.name)


def read_rows(path: Path, names: list[str]) -> Matrix:
    """The rows of a matrix (the tasks', or the harness's) that an earlier, unfinished attempt
    of this run already scored."""
    if not path.is_file():
        return {}
    columns, rows = read_matrix(path)
    return rows if columns == names else {}
