"""The task loop: train LoRA stage by stage, save an adapter after each, score every task each time.

Read `run` and then `TaskLoop` top to bottom: `setup` (load, attach, score the base row),
`resume` (only when a stopped run continues), `train` (the stage loop) and `complete` are the
whole of `pecft train`. Everything that differs between continual-learning strategies happens
inside the strategy's hooks (`pecft_cli.strategies.base`), never in a branch here; replay is a
buffer that any strategy's stages draw their examples from.

Several processes (`accelerate launch`, `torchrun`) split every global batch between them and
sum their gradients, so they compute what one process computes with the same recipe; the main
process alone writes files. A checkpoint after every `checkpoint_every` steps and at every stage
end lets a stopped run continue exactly: running the same command again resumes it. Progress
goes to an `on_event` callback (`pecft_cli.events`), so the library never prints.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from pecft_cli.data.render import RenderedTask
from pecft_cli.errors import Diverged, PecftError, Preempted, bounded
from pecft_cli.events import EventCallback, ignore
from pecft_cli.model.adapters import parameter_counts
from pecft_cli.model.load import load_model, load_tokenizer
from pecft_cli.parallel import sharding
from pecft_cli.parallel.distributed import cuda_devices, on_main, process_group
from pecft_cli.parallel.preemption import StopSignals
from pecft_cli.recipe.load import dump_recipe
from pecft_cli.recipe.schema import Recipe, output_dir
from pecft_cli.recipe.strategies import strategy_label
from pecft_cli.runfolder.atomic import read_json_file, write_folder, write_json, write_text
from pecft_cli.runfolder.claim import RunLock, check_output_folder, claim_run_folder
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.runfolder.state import RunState, now, peak_memory_mb, write_state
from pecft_cli.scoring.harness import harness_changes, harness_tasks
from pecft_cli.scoring.metrics import stage_metrics
from pecft_cli.serving.router import save_router
from pecft_cli.serving.routing import routing_for
from pecft_cli.strategies import build_strategy
from pecft_cli.strategies.base import Stage
from pecft_cli.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_lora_state,
    lora_state,
    set_rng_state,
    trim_log,
    write_checkpoint,
)
from pecft_cli.training.context import RunContext
from pecft_cli.training.disk import keep_stage_adapters
from pecft_cli.training.model_card import write_card
from pecft_cli.training.preflight import preflight
from pecft_cli.training.routes import learn_routes
from pecft_cli.training.rows import MatrixRows
from pecft_cli.training.stage import StagePlan, StageTrainer
from pecft_cli.training.tracking import Tracking, check_trackers

Matrix = dict[str, list[float | None]]


@dataclass
class TrainResult:
    """What `pecft train` produced: the run folder, its matrix, metrics and state."""

    folder: Path
    tasks: list[str]
    matrix: Matrix
    metrics: dict[str, Any]
    state: RunState
    already_complete: bool = False


def run(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    on_event: EventCallback = ignore,
    rendered: dict[str, RenderedTask] | None = None,
) -> TrainResult:
    """Train the recipe's tasks in order and write the run folder, or resume an unfinished one.

    `trust_remote_code` is the caller's half of the two-key opt-in to a model's own Python code;
    the recipe's `model.trust_remote_code` is the other. `rendered`: tasks already read.
    """
    started = time.perf_counter()
    accelerator = process_group()
    if not accelerator.is_main_process:
        on_event = ignore
    set_seed(recipe.seed)
    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    processes = accelerator.num_processes
    tasks = preflight(recipe, tokenizer, processes, trust_remote_code, rendered).tasks
    names = [task.name for task in tasks]
    strategy, replay = build_strategy(recipe.strategy, recipe.lora, names, recipe.seed)
    strategy.sharded = sharding.requested(accelerator)
    if strategy.sharded:
        sharding.check_request(recipe.strategy.name, strategy.shards)
    root, text = output_dir(recipe), dump_recipe(recipe)
    check_trackers(recipe, root)
    harness = harness_tasks(recipe.evaluation)
    lock = RunLock(root)

    def claim() -> RunState | None:
        check_output_folder(root)
        lock.acquire()
        return claim_run_folder(root, text, overwrite)

    try:
        previous = on_main(accelerator, claim)
        folder = RunFolder(root)
        if previous is not None and previous.status == "completed":
            on_event("status", {"message": f"{root} holds this run already, completed"})
            return completed_result(folder, previous)
        state = previous or RunState(
            name=recipe.name,
            seed=recipe.seed,
            strategy=strategy_label(recipe.strategy),
            tasks=names,
        )
        if previous is not None:
            on_event("status", {"message": f"resuming the unfinished run in {root}"})
            state.status, state.error = "running", None
            state.resumed_at.append(now())
            started -= state.timings.wall_seconds or 0.0  # wall time adds up
        if accelerator.is_main_process:
            write_text(folder.recipe, text)
            write_state(folder, state)
        tracking = Tracking(accelerator, recipe, folder)
        with StopSignals() as stop:
            ctx = RunContext(
                accelerator=accelerator,
                recipe=recipe,
                tokenizer=tokenizer,
                tasks=tasks,
                strategy=strategy,
                replay=replay,
                folder=folder,
                state=state,
                stop=stop,
                on_event=tracking.listen(on_event),
                trust_remote_code=trust_remote_code,
                routing=routing_for(recipe.strategy, recipe.seed, tokenizer.pad_token_id),
                sharded=strategy.sharded,
                tracking=tracking,
                harness=harness,
            )
            return TaskLoop(ctx, started).run()
    finally:
        lock.release()


class TaskLoop:
    """One run from its loaded model to its last matrix row; the state lives on `ctx`."""

    def __init__(self, ctx: RunContext, started: float) -> None:
        self.ctx = ctx
        self.started = started
        self.cpu_started = time.process_time() - (ctx.state.timings.cpu_seconds or 0.0)
        self.stages: list[Stage] = []
        self.checkpoint: Checkpoint | None = None
        self.rows: MatrixRows = None  # type: ignore[assignment]  # set by setup

    def run(self) -> TrainResult:
        """setup, resume, train, complete; a failure is recorded in run.json, then re-raised."""
        try:
            self.setup()
            first = self.resume() if self.checkpoint is not None else 0
            self.train(first)
            return self.complete()
        except BaseException as exc:
            self.record_failure(exc)
            raise

    def setup(self) -> None:
        """Load the model, attach the strategy's LoRA and score the base row (unless an earlier
        attempt of this run scored it)."""
        ctx, state = self.ctx, self.ctx.state
        loading = time.perf_counter()
        self.checkpoint = load_checkpoint(ctx.folder) if state.resumed_at else None
        if self.checkpoint is None and state.tasks_done:
            raise PecftError(
                f"{ctx.folder.root}: the run stopped after {len(state.tasks_done)} task(s) but "
                "left no checkpoint to resume from; start over with --overwrite."
            )
        if self.checkpoint is None and state.resumed_at and ctx.main:
            write_text(ctx.folder.train_log, "")  # nothing was kept: the log starts over
        ctx.on_event("status", {"message": f"loading model {ctx.recipe.model.path}"})
        device = ctx.accelerator.device
        base = load_model(ctx.recipe.model, device, ctx.trust_remote_code, ctx.sharded)
        # Seed again here: loading (and a first GGUF conversion) may draw from the random
        # generators, and the LoRA initialisation must not depend on whether the model was cached.
        set_seed(ctx.recipe.seed)
        ctx.model = ctx.strategy.attach(base)
        if ctx.sharded:
            sharding.shard(ctx.model, device)
            state.sharding = "fsdp2"
        trainable, total = parameter_counts(ctx.model)
        state.trainable_parameters = max(state.trainable_parameters or 0, trainable)
        state.total_parameters = total
        state.processes = ctx.accelerator.num_processes
        state.dtype = str(ctx.model.dtype).removeprefix("torch.")
        state.timings.load_seconds = round(time.perf_counter() - loading, 2)
        self.stages = ctx.strategy.stages()
        state.stages = [stage.name for stage in self.stages]
        self.rows = MatrixRows(ctx, self.stages, resumed=self.checkpoint is not None)
        self.rows.score_base()

    def resume(self) -> int:
        """Rebuild the strategy, the replay buffer and the weights from the checkpoint; returns
        the index of the stage to train next."""
        ctx, checkpoint = self.ctx, self.checkpoint
        assert checkpoint is not None
        first = checkpoint.stage_index
        finished = self.stages[:first]
        # What finished is what the matrix holds: a kill may fall between a row and the state.
        ctx.state.tasks_done = [
            ctx.names[i]
            for stage in finished
            if stage.name in self.rows.matrix
            for i in stage.tasks
        ]
        if not checkpoint.mid_stage and finished:
            summary = checkpoint.progress.get("summary")
            ctx.state.training.setdefault(finished[-1].name, summary)
        ctx.strategy.resume(ctx.model, finished, checkpoint.strategy)
        for stage in finished:
            learn_routes(self.ctx, stage)
        if ctx.replay is not None:
            ctx.replay.load_state_dict(checkpoint.replay)
        if ctx.main:
            trim_log(ctx.folder, checkpoint)
        if not checkpoint.mid_stage:  # else the stage's trainer restores its own state too
            load_lora_state(ctx.model, checkpoint.lora, ctx.folder.checkpoint)
            set_rng_state(checkpoint.rng[ctx.accelerator.process_index % len(checkpoint.rng)])
            if finished and finished[-1].name not in self.rows.matrix:
                self.finish_stage(finished[-1])
        return first

    def train(self, first: int) -> None:
        """Train, save and score every stage from `first` on."""
        ctx = self.ctx
        for stage in self.stages[first:]:
            summary = self.train_stage(stage)
            learn_routes(self.ctx, stage)
            self.save_stage(stage)
            ctx.state.training[stage.name] = summary
            ctx.state.timings.train_seconds[stage.name] = summary["seconds"]
            trainable = summary["trainable_parameters"]
            ctx.state.trainable_parameters = max(ctx.state.trainable_parameters or 0, trainable)
            self.write_boundary(stage, summary)
            ctx.save_state()
            self.finish_stage(stage)
            if ctx.stop.requested(ctx.accelerator) and stage.index + 1 < len(self.stages):
                raise Preempted(f"stopped after {stage.name}")

    def train_stage(self, stage: Stage) -> dict[str, Any]:
        """Optimise one stage on its own examples mixed with replayed ones; returns its summary."""
        ctx, recipe = self.ctx, self.ctx.recipe
        settings = recipe.stage_training([recipe.tasks[i] for i in stage.tasks])
        own = [example for i in stage.tasks for example in ctx.tasks[i].train]
        ctx.strategy.before_stage(ctx.model, stage, own)
        memory = {
            "strategy": ctx.strategy.state_dict(),
            "replay": ctx.replay.state_dict() if ctx.replay is not None else {},
        }
        examples = ctx.replay.mix(own) if ctx.replay is not None else own
        resume = self.checkpoint
        if resume is None or resume.stage_index != stage.index or not resume.mid_stage:
            resume = None
        done = [ctx.state.training[s.name]["steps"] for s in self.stages[: stage.index]]
        plan = StagePlan(
            stage=stage,
            total=len(self.stages),
            first_step=sum(done),
            examples=examples,
            settings=settings,
            seed=recipe.seed + stage.index,
            memory=memory,
            resume=resume,
        )
        summary = StageTrainer(ctx, plan).train()
        ctx.strategy.after_stage(ctx.model, stage, examples)
        if ctx.replay is not None:
            ctx.replay.remember(stage.index, own)
        return summary

    def save_stage(self, stage: Stage) -> None:
        """Write the stage's adapter and whatever else the strategy and the buffer keep."""
        ctx = self.ctx
        if not ctx.main:
            return
        # exporting may build a temporary adapter; keep the processes' generators equal
        with torch.random.fork_rng(devices=cuda_devices(ctx.accelerator)):
            adapter = ctx.folder.adapter(stage.index, stage.name)
            write_folder(adapter, partial(ctx.strategy.save_adapter, ctx.model, stage))
            keep_stage_adapters(
                ctx.folder, ctx.state.stages, stage.index, ctx.recipe.output.stage_adapters
            )
            ctx.strategy.save_extras(ctx.model, stage, ctx.folder)
            if ctx.replay is not None:
                ctx.replay.save(ctx.folder, [stage.name for stage in self.stages])
            router = ctx.routing.kept()
            if router is not None:
                write_folder(ctx.folder.router, partial(save_router, router))

    def write_boundary(self, stage: Stage, summary: dict[str, Any]) -> None:
        """The checkpoint between this stage and the next: what a resume continues from."""
        ctx = self.ctx
        following = self.stages[stage.index + 1 :]
        checkpoint = Checkpoint(
            stage_index=stage.index + 1,
            step=0,
            lora=lora_state(ctx.model),
            strategy=ctx.strategy.state_dict(),
            replay=ctx.replay.state_dict() if ctx.replay is not None else {},
            progress={"summary": summary},
        )
        label = following[0].name if following else None
        write_checkpoint(ctx.accelerator, ctx.folder, checkpoint, label)

    def finish_stage(self, stage: Stage) -> None:
        """Score every task after `stage` and record the row: the stage is then done."""
        ctx = self.ctx
        self.rows.score_stage(stage)
        ctx.state.tasks_done += [ctx.names[i] for i in stage.tasks]
        write_card(ctx, self.stages, stage, self.rows.matrix[stage.name])
        ctx.state.stage_peak_memory_mb[stage.name] = peak_memory_mb()
        ctx.save_state()

    def complete(self) -> TrainResult:
        """Compute the metrics, mark the run completed and drop the checkpoint."""
        ctx, state = self.ctx, self.ctx.state
        metrics = stage_metrics(ctx.names, state.stages, self.rows.matrix)
        if ctx.harness is not None:
            metrics["harness"] = harness_changes(ctx.harness.names, self.rows.harness)
        state.status = "completed"
        state.finished_at = now()
        self.stamp_times()
        state.peak_memory_mb = peak_memory_mb()
        if ctx.main:
            write_json(ctx.folder.metrics, metrics)
            write_state(ctx.folder, state)
            shutil.rmtree(ctx.folder.checkpoint, ignore_errors=True)
        if ctx.tracking is not None:
            ctx.tracking.finish(metrics, ctx.folder.heatmap)
        return TrainResult(ctx.folder.root, ctx.names, self.rows.matrix, metrics, state)

    def stamp_times(self) -> None:
        """Wall and CPU seconds so far, both adding up over resumes; CPU time is what a run
        costs when other work shares the machine."""
        timings = self.ctx.state.timings
        timings.wall_seconds = round(time.perf_counter() - self.started, 2)
        timings.cpu_seconds = round(time.process_time() - self.cpu_started, 2)

    def record_failure(self, exc: BaseException) -> None:
        """Say in run.json how the run ended; a full disk must not hide the cause."""
        state = self.ctx.state
        state.status = run_status(exc)
        if not isinstance(exc, Preempted):
            state.error = bounded(f"{type(exc).__name__}: {exc}")
        state.finished_at = now()
        self.stamp_times()
        with contextlib.suppress(OSError):
            self.ctx.save_state()
        if self.ctx.tracking is not None:
            self.ctx.tracking.close()


def completed_result(folder: RunFolder, state: RunState) -> TrainResult:
    """What a finished run wrote, for a command that found nothing left to do."""
    tasks, matrix = read_matrix(folder.matrix)
    metrics = read_json_file(folder.metrics)
    return TrainResult(folder.root, tasks, matrix, metrics, state, already_complete=True)


def run_status(exc: BaseException) -> str:
    if isinstance(exc, Preempted):
        return "preempted"
    if isinstance(exc, Diverged):
        return "diverged"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
