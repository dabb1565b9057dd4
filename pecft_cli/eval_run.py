"""Scoring a trained run again from its saved adapters: the evaluation matrix without training.

The base model is loaded once; each stage's adapter is loaded with stock PEFT, exactly as a
user would load it. Finished cells are recorded in `<out>/.progress/`, so an interrupted
evaluation resumes where it stopped; the matrix, metrics and predictions in `<out>` change only
when the whole evaluation has finished, so a failed evaluation never overwrites earlier results.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import PeftModel

from pecft_cli import runs
from pecft_cli.artifacts import adapter_config, adapter_error
from pecft_cli.data import TaskData, load_task, read_local
from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.evaluate import combine, score_task
from pecft_cli.metrics import stage_metrics
from pecft_cli.model import load_model, load_tokenizer
from pecft_cli.plot import save_heatmap
from pecft_cli.recipe import Recipe, TaskSection, load_recipe
from pecft_cli.train import EventCallback, check_processes, ignore, on_main

BASE = "base"


@dataclass
class TrainedRun:
    """A run folder as evaluation needs it: the recipe, the state and the stages on disk."""

    folder: runs.RunFolder
    recipe: Recipe
    state: dict[str, Any]
    adapters: dict[str, Path]

    @property
    def tasks(self) -> list[str]:
        return [task.name for task in self.recipe.tasks]

    @property
    def stages(self) -> list[str]:
        return [BASE, *self.adapters]


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


def open_run(path: Path) -> TrainedRun:
    """Check that `path` is a pecft run folder this version can read, and list its stages."""
    folder = runs.RunFolder(path.resolve())
    if not path.is_dir():
        raise PecftError(f"{path}: no such run folder. Give the output_dir of a `pecft train` run.")
    state = runs.read_state(folder)
    if state is None:
        raise PecftError(
            f"{path}: not a pecft run folder (it has no run.json). Give the output_dir of a "
            "`pecft train` run."
        )
    version = state.get("format_version")
    if version != runs.FORMAT_VERSION:
        raise PecftError(
            f"{folder.state}: run folder format {short(version)} is not one this pecft reads "
            f"(format {runs.FORMAT_VERSION}); evaluate it with the pecft version that wrote it."
        )
    if not folder.recipe.is_file():
        raise PecftError(f"{path}: the run folder is incomplete: recipe.yaml is missing.")
    recipe = load_recipe(folder.recipe)
    adapters = {}
    for index, stage in enumerate(run_stages(state, [task.name for task in recipe.tasks])):
        adapter = folder.adapter(index, stage)
        if (adapter / "adapter_config.json").is_file():
            adapters[stage] = adapter
    return TrainedRun(folder, recipe, state, adapters)


def run_stages(state: dict[str, Any], tasks: list[str]) -> list[str]:
    """The run's trained stages in order: one per task, unless the strategy planned others."""
    return state.get("stages") or tasks


def pick(requested: list[str] | None, available: list[str], what: str, where: Path) -> list[str]:
    """The requested names (or 1-based numbers) in run order; all of them when none are given."""
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


def evaluate_run(
    run_dir: Path,
    *,
    tasks: list[str] | None = None,
    stages: list[str] | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    data: list[Path] | None = None,
    out: Path | None = None,
    on_event: EventCallback = ignore,
) -> EvalResult:
    """Score the chosen tasks at the chosen stages and write matrix, metrics and predictions."""
    started = time.perf_counter()
    trained = open_run(run_dir)
    if limit is not None and limit < 1:
        raise PecftError(f"--limit {limit}: give a positive number of examples per task.")
    if batch_size is not None and batch_size < 1:
        raise PecftError(f"--batch-size {batch_size}: give a positive batch size.")
    task_names = pick(tasks, trained.tasks, "task", run_dir)
    stage_names = pick(stages, trained.stages, "stage", run_dir)
    out = (out or default_out(trained, limit)).resolve()
    recipe = trained.recipe
    changes = {k: v for k, v in {"limit": limit, "batch_size": batch_size}.items() if v}
    recipe.evaluation = recipe.evaluation.model_copy(update=changes)
    extras = []
    for path in data or []:
        extras.append(extra_task(path.resolve(), trained.tasks + [t.name for t in extras]))

    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model)
    sections = {task.name: task for task in recipe.tasks}
    scored = [load_task(sections[name], recipe, tokenizer, train=False) for name in task_names]
    scored += [load_task(task, recipe, tokenizer, train=False) for task in extras]

    settings = {
        "tasks": [task.name for task in scored],
        "stages": stage_names,
        "limit": recipe.evaluation.limit,
        "data": [str(path.resolve()) for path in data or []],
    }
    for stage in stage_names:
        if stage != BASE:
            adapter_config(trained.adapters[stage])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_processes(accelerator)
    main = accelerator.is_main_process
    if not main:
        on_event = ignore
    scores = on_main(accelerator, lambda: Progress.open(out, settings).scores)
    progress = Progress(out, settings, scores, writer=main)
    on_event("status", {"message": f"loading model {recipe.model.path}"})
    model = load_model(recipe.model, accelerator.device)
    for stage in stage_names:
        todo = [task for task in scored if not progress.done(stage, task.name)]
        if not todo:
            continue
        model = stage_model(model, stage, trained.adapters.get(stage))
        for task in todo:
            score_cell(accelerator, model, tokenizer, task, recipe, stage, progress, on_event)
    extra_names = [t.name for t in extras]
    if not main:
        return EvalResult(out, trained.tasks, {}, None, {}, extra_names, progress.resumed, 0.0)
    return finish(trained, out, progress, task_names, extra_names, started)


def default_out(trained: TrainedRun, limit: int | None) -> Path:
    """The run's own eval/ folder, unless a limit would make its scores differ from train's."""
    if limit is None or limit == trained.recipe.evaluation.limit:
        return trained.folder.matrix.parent
    return trained.folder.root / f"eval-limit{limit}"


def stage_model(model: Any, stage: str, adapter: Path | None) -> Any:
    """The model of one stage: the bare base, or the base with that stage's adapter alone."""
    base = model.unload() if isinstance(model, PeftModel) else model
    if stage == BASE:
        return base
    try:
        return PeftModel.from_pretrained(base, adapter)
    except Exception as exc:
        raise adapter_error(adapter, exc) from None


def score_cell(
    accelerator: Accelerator,
    model: Any,
    tokenizer: Any,
    task: TaskData,
    recipe: Recipe,
    stage: str,
    progress: Progress,
    on_event: EventCallback,
) -> None:
    """Score one task at one stage (each process its share of the batches) and record it,
    predictions first, so a resume can trust it."""
    started = time.perf_counter()
    shard = (accelerator.process_index, accelerator.num_processes)
    result = score_task(model, tokenizer, task, recipe.evaluation, shard)
    if accelerator.num_processes > 1:
        result = combine(gather_object([result]))
    if progress.writer:
        runs.write_jsonl(progress.predictions(stage, task.name), result.predictions)
    progress.record(stage, task.name, result.score)
    on_event("eval", result.event(stage, time.perf_counter() - started))


class Progress:
    """The finished cells of an evaluation in progress, kept under `<out>/.progress/`; only the
    main process (the writer) keeps the files, every process keeps the scores."""

    def __init__(
        self,
        out: Path,
        settings: dict[str, Any],
        scores: dict[str, dict[str, float]],
        writer: bool = True,
    ):
        self.out = out
        self.root = out / ".progress"
        self.settings = settings
        self.scores = scores
        self.writer = writer
        self.resumed = sum(len(row) for row in scores.values())

    @classmethod
    def open(cls, out: Path, settings: dict[str, Any]) -> Progress:
        """Resume the cells of an interrupted evaluation with the same settings; else start over.
        A cell counts as done only with its predictions on disk."""
        state = runs.read_json_file(out / ".progress" / "state.json")
        if state and state.get("settings") == settings:
            progress = cls(out, settings, {})
            for stage, row in state["scores"].items():
                for task, score in row.items():
                    if progress.predictions(stage, task).is_file():
                        progress.scores.setdefault(stage, {})[task] = score
            progress.resumed = sum(len(row) for row in progress.scores.values())
            return progress
        shutil.rmtree(out / ".progress", ignore_errors=True)
        progress = cls(out, settings, {})
        progress.save()
        return progress

    def predictions(self, stage: str, task: str) -> Path:
        return self.root / "predictions" / stage / f"{task}.jsonl"

    def done(self, stage: str, task: str) -> bool:
        return task in self.scores.get(stage, {})

    def record(self, stage: str, task: str, score: float) -> None:
        self.scores.setdefault(stage, {})[task] = score
        if self.writer:
            self.save()

    def save(self) -> None:
        runs.write_json(
            self.root / "state.json", {"settings": self.settings, "scores": self.scores}
        )

    def score(self, stage: str, task: str) -> float | None:
        return self.scores.get(stage, {}).get(task)


def finish(
    trained: TrainedRun,
    out: Path,
    progress: Progress,
    task_names: list[str],
    extra_names: list[str],
    started: float,
) -> EvalResult:
    """Put the new cells in place: predictions, the merged matrix, metrics, extra scores."""
    for stage, row in progress.scores.items():
        for task in row:
            target = out / "predictions" / stage / f"{task}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            progress.predictions(stage, task).replace(target)
    matrix = merged_matrix(trained, out / "matrix.csv", progress, task_names)
    runs.write_matrix(out / "matrix.csv", trained.tasks, matrix)
    save_heatmap(out / "matrix.png", trained.tasks, matrix, trained.recipe.name)
    metrics = matrix_metrics(trained.tasks, run_stages(trained.state, trained.tasks), matrix)
    if metrics is not None:
        runs.write_json(out / "metrics.json", metrics)
    extra = {
        stage: [progress.score(stage, name) for name in extra_names]
        for stage in trained.stages
        if any(progress.score(stage, name) is not None for name in extra_names)
    }
    if extra:
        runs.write_matrix(out / "extra.csv", extra_names, extra)
    shutil.rmtree(progress.root, ignore_errors=True)
    return EvalResult(
        out=out,
        tasks=trained.tasks,
        matrix=matrix,
        metrics=metrics,
        extra=extra,
        extra_names=extra_names,
        resumed_cells=progress.resumed,
        seconds=round(time.perf_counter() - started, 2),
    )


def merged_matrix(
    trained: TrainedRun, path: Path, progress: Progress, task_names: list[str]
) -> dict[str, list[float | None]]:
    """The existing matrix in `path` (if any) with the newly scored cells written over it."""
    old: dict[str, list[float | None]] = {}
    if path.is_file():
        columns, rows = runs.read_matrix(path)
        old = {
            stage: [dict(zip(columns, row, strict=True)).get(task) for task in trained.tasks]
            for stage, row in rows.items()
        }
    matrix = {}
    for stage in trained.stages:
        row = list(old.get(stage, [None] * len(trained.tasks)))
        for j, task in enumerate(trained.tasks):
            new = progress.score(stage, task) if task in task_names else None
            if new is not None:
                row[j] = new
        if stage in old or any(value is not None for value in row):
            matrix[stage] = row
    return matrix


def matrix_metrics(
    tasks: list[str], stages: list[str], matrix: dict[str, list[float | None]]
) -> dict[str, Any] | None:
    """The run's metrics once every trained stage has every task scored; None before."""
    if any(matrix.get(stage) is None or None in matrix[stage] for stage in stages):
        return None
    base = matrix.get(BASE)
    complete = {stage: matrix[stage] for stage in stages}
    if base is not None and None not in base:
        complete[BASE] = base
    return stage_metrics(tasks, stages, complete)
