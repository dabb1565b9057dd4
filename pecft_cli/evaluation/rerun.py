"""Scoring a trained run again from its saved adapters: the evaluation matrix without training.

The base model is loaded once; each stage's adapter is loaded with stock PEFT, exactly as a
user would load it. Finished cells are recorded in `<out>/.progress/`, so an interrupted
evaluation resumes where it stopped; the matrix, metrics and predictions in `<out>` change only
when the whole evaluation has finished, so a failed evaluation never overwrites earlier results.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pecft_cli.data.read import read_local
from pecft_cli.data.tasks import TaskData, load_task
from pecft_cli.errors import PecftError
from pecft_cli.events import EventCallback, ignore
from pecft_cli.model.artifacts import adapter_config
from pecft_cli.model.load import load_model, load_tokenizer
from pecft_cli.parallel.distributed import on_main, process_group
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.runfolder.atomic import read_json_file, write_json, write_jsonl
from pecft_cli.runfolder.layout import BASE, EvalFolder
from pecft_cli.runfolder.matrix import read_matrix, write_matrix
from pecft_cli.runfolder.saved import SavedRun, open_run, pick
from pecft_cli.scoring.heatmap import save_heatmap
from pecft_cli.scoring.metrics import matrix_metrics
from pecft_cli.scoring.scorer import TaskScore, score_shared
from pecft_cli.serving.answering import Routing
from pecft_cli.serving.routing import saved_routing


@dataclass
class EvalOptions:
    """What to score: tasks and stages (all when None), at most `limit` examples per task, with
    another batch size, extra `data` files, into `out` (default: the run's eval/ folder)."""

    tasks: list[str] | None = None
    stages: list[str] | None = None
    limit: int | None = None
    batch_size: int | None = None
    data: list[Path] = field(default_factory=list)
    out: Path | None = None


@dataclass
class EvalResult:
    out: Path
    tasks: list[str]
    matrix: dict[str, list[float | None]]
    metrics: dict[str, Any] | None
    extra: dict[str, list[float | None]]
    extra_names: list[str]
    resumed_cells: int
    seconds: float


def extra_task(path: Path, names: list[str]) -> TaskSection:
    """A task section for an extra eval file whose rows hold prompt, target and maybe choices."""
    rows = read_local(path, f"--data {path}")
    if not rows:
        raise PecftError(f"--data {path}: the file holds no rows.")
    missing = [key for key in ("prompt", "target") if key not in rows[0]]
    if missing:
        raise PecftError(
            f"--data {path}, row 1: an extra eval file needs the fields prompt and target (and "
            f"optionally choices); this row lacks {', '.join(missing)}."
        )
    name = path.stem
    if name in names:
        raise PecftError(
            f"--data {path}: its name '{name}' (the file name) is already a task or another "
            "--data file of this run; rename the file."
        )
    return TaskSection(
        name=name,
        train=str(path),
        eval=str(path),
        prompt="{prompt}",
        target="{target}",
        choices="choices" if "choices" in rows[0] else None,
    )


@dataclass
class Evaluation:
    """One evaluation's parts: the run, its recipe, the chosen cells and where they go."""

    run: SavedRun
    recipe: Recipe
    out: EvalFolder
    task_names: list[str]
    stage_names: list[str]
    extras: list[TaskSection]

    def trained(self, stage: str) -> int:
        """How many stages had trained at `stage` (0 at the base row)."""
        return 0 if stage == BASE else self.run.state.planned_stages.index(stage) + 1

    def settings(self) -> dict[str, Any]:
        """What makes two evaluations the same, so the second may resume the first's cells."""
        return {
            "tasks": self.task_names + [task.name for task in self.extras],
            "stages": self.stage_names,
            "limit": self.recipe.evaluation.limit,
            "data": [task.eval for task in self.extras],
        }


def evaluate_run(
    run_dir: Path,
    options: EvalOptions | None = None,
    *,
    trust_remote_code: bool = False,
    on_event: EventCallback = ignore,
) -> EvalResult:
    """Score the chosen tasks at the chosen stages and write matrix, metrics and predictions."""
    started = time.perf_counter()
    evaluation = plan(run_dir, options or EvalOptions())
    recipe = evaluation.recipe
    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    sections = {task.name: task for task in recipe.tasks}
    chosen = [sections[name] for name in evaluation.task_names] + evaluation.extras
    scored = [load_task(task, recipe, tokenizer, train=False) for task in chosen]
    adapters = evaluation.run.adapters
    for stage in evaluation.stage_names:
        if stage != BASE:
            adapter_config(adapters[stage])
    accelerator = process_group()
    main = accelerator.is_main_process
    if not main:
        on_event = ignore
    settings = evaluation.settings()
    scores = on_main(accelerator, lambda: Progress.open(evaluation.out, settings).scores)
    progress = Progress(evaluation.out, settings, scores, writer=main)
    on_event("status", {"message": f"loading model {recipe.model.path}"})
    model = load_model(recipe.model, accelerator.device, trust_remote_code)
    routing = saved_routing(evaluation.run, tokenizer.pad_token_id)
    for stage in evaluation.stage_names:
        todo = [task for task in scored if not progress.done(stage, task.name)]
        if not todo:
            continue
        model, score = cell_scorer(accelerator, model, tokenizer, evaluation, routing, stage)
        for task in todo:
            started_cell = time.perf_counter()
            result = score(task)
            progress.record(stage, task.name, result)
            on_event("eval", result.event(stage, time.perf_counter() - started_cell))
    if not main:
        extras, tasks = [t.name for t in evaluation.extras], evaluation.run.tasks
        return EvalResult(evaluation.out.root, tasks, {}, None, {}, extras, progress.resumed, 0.0)
    return finish(evaluation, progress, started)


def plan(run_dir: Path, options: EvalOptions) -> Evaluation:
    """Check the run and the options before anything is loaded: which cells, and where to."""
    saved = open_run(run_dir)
    if options.limit is not None and options.limit < 1:
        raise PecftError(f"--limit {options.limit}: give a positive number of examples per task.")
    if options.batch_size is not None and options.batch_size < 1:
        raise PecftError(f"--batch-size {options.batch_size}: give a positive batch size.")
    recipe = saved.recipe.model_copy()
    task_names = pick(options.tasks, saved.tasks, "task", run_dir)
    stage_names = pick(options.stages, saved.stages, "stage", run_dir)
    out = default_out(saved, recipe, options.limit)
    if options.out is not None:
        out = EvalFolder(options.out.resolve())
    limits = {"limit": options.limit, "batch_size": options.batch_size}
    changes = {key: value for key, value in limits.items() if value}
    recipe.evaluation = recipe.evaluation.model_copy(update=changes)
    extras: list[TaskSection] = []
    for path in options.data:
        extras.append(extra_task(path.resolve(), saved.tasks + [t.name for t in extras]))
    saved_routing(saved, pad_id=0)  # a router that does not match the adapters fails here
    return Evaluation(saved, recipe, out, task_names, stage_names, extras)


def cell_scorer(
    accelerator: Any,
    model: Any,
    tokenizer: Any,
    evaluation: Evaluation,
    routing: Routing,
    stage: str,
) -> tuple[Any, Callable[[TaskData], TaskScore]]:
    """The model of `stage` and how one task is scored there, through the run's routing mode:
    the stage's adapter, a router's pick input by input, or Arrow over the task LoRAs."""
    routing = routing.at(evaluation.trained(stage))
    experts = routing.open(model, evaluation.run, stage)

    def scorer(served: Any, task: TaskData) -> TaskScore:
        return score_shared(accelerator, served, tokenizer, task, evaluation.recipe.evaluation)

    return experts.model, lambda task: routing.score(experts, task, scorer)


def default_out(saved: SavedRun, recipe: Recipe, limit: int | None) -> EvalFolder:
    """The run's own eval/ folder, unless a limit would make its scores differ from train's."""
    if limit is None or limit == recipe.evaluation.limit:
        return saved.folder.eval
    return saved.folder.limited_eval(limit)


class Progress:
    """The finished cells of an evaluation in progress, kept under `<out>/.progress/`; only the
    main process (the writer) keeps the files, every process keeps the scores."""

    def __init__(
        self,
        out: EvalFolder,
        settings: dict[str, Any],
        scores: dict[str, dict[str, float]],
        writer: bool = True,
    ):
        self.out = out
        self.scratch = EvalFolder(out.progress)
        self.settings = settings
        self.scores = scores
        self.writer = writer
        self.resumed = sum(len(row) for row in scores.values())

    @property
    def state_file(self) -> Path:
        return self.out.progress / "state.json"

    @classmethod
    def open(cls, out: EvalFolder, settings: dict[str, Any]) -> Progress:
        """Resume the cells of an interrupted evaluation with the same settings; else start over.
        A cell counts as done only with its predictions on disk."""
        progress = cls(out, settings, {})
        state = read_json_file(progress.state_file)
        if state and state.get("settings") == settings:
            for stage, row in state["scores"].items():
                for task, score in row.items():
                    if progress.scratch.predictions(stage, task).is_file():
                        progress.scores.setdefault(stage, {})[task] = score
            progress.resumed = sum(len(row) for row in progress.scores.values())
            return progress
        shutil.rmtree(out.progress, ignore_errors=True)
        progress.save()
        return progress

    def done(self, stage: str, task: str) -> bool:
        return task in self.scores.get(stage, {})

    def record(self, stage: str, task: str, result: TaskScore) -> None:
        """Keep one scored cell, predictions first, so a resume can trust it."""
        if self.writer:
            write_jsonl(self.scratch.predictions(stage, task), result.predictions)
        self.scores.setdefault(stage, {})[task] = result.score
        if self.writer:
            self.save()

    def save(self) -> None:
        write_json(self.state_file, {"settings": self.settings, "scores": self.scores})

    def score(self, stage: str, task: str) -> float | None:
        return self.scores.get(stage, {}).get(task)


def finish(evaluation: Evaluation, progress: Progress, started: float) -> EvalResult:
    """Put the new cells in place: predictions, the merged matrix, metrics, extra scores."""
    out, saved, tasks = evaluation.out, evaluation.run, evaluation.run.tasks
    for stage, row in progress.scores.items():
        for task in row:
            target = out.predictions(stage, task)
            target.parent.mkdir(parents=True, exist_ok=True)
            progress.scratch.predictions(stage, task).replace(target)
    matrix = merged_matrix(evaluation, progress)
    write_matrix(out.matrix, tasks, matrix)
    save_heatmap(out.heatmap, tasks, matrix, evaluation.recipe.name)
    metrics = matrix_metrics(tasks, saved.state.planned_stages, matrix)
    if metrics is not None:
        write_json(out.metrics, metrics)
    extra_names = [task.name for task in evaluation.extras]
    extra = {
        stage: [progress.score(stage, name) for name in extra_names]
        for stage in saved.stages
        if any(progress.score(stage, name) is not None for name in extra_names)
    }
    if extra:
        write_matrix(out.extra, extra_names, extra)
    shutil.rmtree(out.progress, ignore_errors=True)
    return EvalResult(
        out=out.root,
        tasks=tasks,
        matrix=matrix,
        metrics=metrics,
        extra=extra,
        extra_names=extra_names,
        resumed_cells=progress.resumed,
        seconds=round(time.perf_counter() - started, 2),
    )


def merged_matrix(evaluation: Evaluation, progress: Progress) -> dict[str, list[float | None]]:
    """The existing matrix in the output folder (if any) with the newly scored cells over it."""
    saved, path = evaluation.run, evaluation.out.matrix
    old: dict[str, list[float | None]] = {}
    if path.is_file():
        columns, rows = read_matrix(path)
        old = {
            stage: [dict(zip(columns, row, strict=True)).get(task) for task in saved.tasks]
            for stage, row in rows.items()
        }
    matrix = {}
    for stage in saved.stages:
        row = list(old.get(stage, [None] * len(saved.tasks)))
        for j, task in enumerate(saved.tasks):
            new = progress.score(stage, task) if task in evaluation.task_names else None
            if new is not None:
                row[j] = new
        if stage in old or any(value is not None for value in row):
            matrix[stage] = row
    return matrix
