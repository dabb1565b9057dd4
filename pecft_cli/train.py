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
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from pecft_cli import runs, sharding
from pecft_cli.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_lora_state,
    lora_state,
    set_rng_state,
    write_checkpoint,
)
from pecft_cli.context import RunContext
from pecft_cli.data import TaskData
from pecft_cli.distributed import cuda_devices, on_main, process_group, score_shared
from pecft_cli.errors import Diverged, PecftError, Preempted, bounded
from pecft_cli.evaluate import TaskScore
from pecft_cli.events import EventCallback, ignore
from pecft_cli.harness import harness_changes, harness_tasks, score_harness
from pecft_cli.metrics import stage_metrics
from pecft_cli.model import load_model, load_tokenizer
from pecft_cli.model_card import CardFacts, card_text
from pecft_cli.optimize import StagePlan, StageTrainer
from pecft_cli.plot import save_heatmap
from pecft_cli.preemption import StopSignals
from pecft_cli.preflight import preflight
from pecft_cli.recipe import Recipe, output_dir
from pecft_cli.recipe_file import dump_recipe
from pecft_cli.routing import (
    PROTOTYPE_EXAMPLES,
    Router,
    arrow_served,
    embed,
    routed_correctly,
    score_routed,
)
from pecft_cli.strategies import build_strategy, strategy_label
from pecft_cli.strategies.base import Stage
from pecft_cli.tracking import Tracking, check_trackers

Matrix = dict[str, list[float | None]]


@dataclass
class TrainResult:
    """What `pecft train` produced: the run folder, its matrix, metrics and state."""

    folder: Path
    tasks: list[str]
    matrix: Matrix
    metrics: dict[str, Any]
    state: runs.RunState
    already_complete: bool = False


def run(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    on_event: EventCallback = ignore,
) -> TrainResult:
    """Train the recipe's tasks in order and write the run folder, or resume an unfinished one.

    `trust_remote_code` is the caller's half of the two-key opt-in to a model's own Python code;
    the recipe's `model.trust_remote_code` is the other.
    """
    started = time.perf_counter()
    accelerator = process_group()
    if not accelerator.is_main_process:
        on_event = ignore
    set_seed(recipe.seed)
    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    tasks = preflight(recipe, tokenizer, accelerator.num_processes, trust_remote_code).tasks
    names = [task.name for task in tasks]
    strategy, replay = build_strategy(recipe.strategy, recipe.lora, names, recipe.seed)
    strategy.sharded = sharding.requested(accelerator)
    if strategy.sharded:
        sharding.check_request(recipe.strategy.name, strategy.shards)
    root, text = output_dir(recipe), dump_recipe(recipe)
    check_trackers(recipe, root)
    harness = harness_tasks(recipe.evaluation)
    lock = runs.RunLock(root)

    def claim() -> runs.RunState | None:
        runs.check_output_folder(root)
        lock.acquire()
        return runs.claim_run_folder(root, text, overwrite)

    try:
        previous = on_main(accelerator, claim)
        folder = runs.RunFolder(root)
        if previous is not None and previous.status == "completed":
            on_event("status", {"message": f"{root} holds this run already, completed"})
            return completed_result(folder, previous)
        state = previous or runs.RunState(
            name=recipe.name,
            seed=recipe.seed,
            strategy=strategy_label(recipe.strategy),
            tasks=names,
        )
        if previous is not None:
            on_event("status", {"message": f"resuming the unfinished run in {root}"})
            state.status, state.error = "running", None
            state.resumed_at.append(runs.now())
            started -= state.timings.wall_seconds or 0.0  # wall time adds up
        if accelerator.is_main_process:
            runs.write_text(folder.recipe, text)
            runs.write_state(folder, state)
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
                router=Router() if recipe.strategy.routing == "prototype" else None,
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
        self.matrix: Matrix = {}
        self.checkpoint: Checkpoint | None = None
        self.eval_vectors: dict[str, torch.Tensor] = {}  # routing: eval prompts' embeddings
        self.harness: Matrix = {}  # evaluation.harness: a row of harness scores per stage

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
            runs.write_text(ctx.folder.train_log, "")  # nothing was kept: the log starts over
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
        self.matrix = read_rows(ctx.folder.matrix, ctx.names) if self.checkpoint is not None else {}
        if self.checkpoint is not None and ctx.harness is not None:
            self.harness = read_rows(ctx.folder.eval.harness, ctx.harness.names)
        if runs.BASE not in self.matrix:
            with ctx.model.disable_adapter():
                self.matrix[runs.BASE] = self.score_row(runs.BASE)
                self.score_harness(runs.BASE)
            self.write_matrix()
        self.stages = ctx.strategy.stages()
        state.stages = [stage.name for stage in self.stages]

    def resume(self) -> int:
        """Rebuild the strategy, the replay buffer and the weights from the checkpoint; returns
        the index of the stage to train next."""
        ctx, checkpoint = self.ctx, self.checkpoint
        assert checkpoint is not None
        first = checkpoint.stage_index
        finished = self.stages[:first]
        # What finished is what the matrix holds: a kill may fall between a row and the state.
        ctx.state.tasks_done = [
            ctx.names[i] for stage in finished if stage.name in self.matrix for i in stage.tasks
        ]
        if not checkpoint.mid_stage and finished:
            summary = checkpoint.progress.get("summary")
            ctx.state.training.setdefault(finished[-1].name, summary)
        ctx.strategy.resume(ctx.model, finished, checkpoint.strategy)
        for stage in finished:
            self.learn_routes(stage)
        if ctx.replay is not None:
            ctx.replay.load_state_dict(checkpoint.replay)
        if ctx.main:
            trim_log(ctx.folder, checkpoint)
        if not checkpoint.mid_stage:  # else the stage's trainer restores its own state too
            load_lora_state(ctx.model, checkpoint.lora, ctx.folder.checkpoint)
            set_rng_state(checkpoint.rng[ctx.accelerator.process_index % len(checkpoint.rng)])
            if finished and finished[-1].name not in self.matrix:
                self.finish_stage(finished[-1])
        return first

    def train(self, first: int) -> None:
        """Train, save and score every stage from `first` on."""
        ctx = self.ctx
        for stage in self.stages[first:]:
            summary = self.train_stage(stage)
            self.learn_routes(stage)
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
            runs.write_folder(adapter, partial(ctx.strategy.save_adapter, ctx.model, stage))
            ctx.strategy.save_extras(ctx.model, stage, ctx.folder)
            if ctx.replay is not None:
                ctx.replay.save(ctx.folder, [stage.name for stage in self.stages])
            if ctx.router is not None:
                runs.write_folder(ctx.folder.router, ctx.router.save)

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
        self.matrix[stage.name] = self.score_row(stage.name)
        self.score_harness(stage.name)
        ctx.state.tasks_done += [ctx.names[i] for i in stage.tasks]
        self.write_matrix()
        self.write_card(stage)
        ctx.state.stage_peak_memory_mb[stage.name] = runs.peak_memory_mb()
        ctx.save_state()

    def write_card(self, stage: Stage) -> None:
        """The stage's adapter folder gets its model card, with the row just scored."""
        ctx = self.ctx
        if not ctx.main:
            return
        facts = CardFacts(
            recipe=ctx.recipe,
            strategy=ctx.state.strategy,
            stage=stage.index,
            stages=[s.name for s in self.stages],
            trained=list(ctx.state.tasks_done),
            scores=self.matrix[stage.name],
            metrics=[ctx.recipe.task_metric(task) for task in ctx.recipe.tasks],
            routed=ctx.recipe.strategy.routing != "none",
            versions=ctx.state.versions,
        )
        runs.write_text(ctx.folder.card(stage.index, stage.name), card_text(facts))

    def score_row(self, stage: str) -> list[float | None]:
        """Score every task with the model as it stands (or, with a router, as it routes each
        input); one row of the matrix.

        Each process scores its share of the batches; scoring draws no random numbers that
        training would see, so a resumed run trains on as an uninterrupted one does.
        """
        ctx = self.ctx
        started = time.perf_counter()
        row: list[float | None] = []
        routed = [0, 0]  # inputs of trained tasks: sent to their own task's LoRA, all
        chosen = self.cells(stage)
        with torch.random.fork_rng(devices=cuda_devices(ctx.accelerator)):
            for index, task in enumerate(ctx.tasks):
                if index not in chosen:
                    row.append(None)
                    continue
                task_started = time.perf_counter()
                result = self.score_task(task, stage, routed)
                if ctx.main:
                    runs.write_jsonl(ctx.folder.predictions(stage, task.name), result.predictions)
                ctx.on_event("eval", result.event(stage, time.perf_counter() - task_started))
                row.append(result.score)
                if ctx.stop.requested(ctx.accelerator):
                    raise Preempted(f"stopped while scoring after {stage}")
        ctx.state.timings.eval_seconds[stage] = round(time.perf_counter() - started, 2)
        if routed[1]:
            ctx.state.routing_accuracy[stage] = round(routed[0] / routed[1], 6)
        return row

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
            runs.write_matrix(eval_folder.harness, ctx.harness.names, self.harness)
            title = f"{ctx.recipe.name}: harness"
            save_heatmap(eval_folder.harness_heatmap, ctx.harness.names, self.harness, title)

    def cells(self, stage: str) -> set[int]:
        """The tasks scored after `stage`: all of them, or with `evaluation.cells: sparse` the
        stage's own and the next stage's (every task at the base row, the last stage and each
        `full_every`-th), the cells the metrics need."""
        evaluation, everything = self.ctx.recipe.evaluation, set(range(len(self.ctx.tasks)))
        if evaluation.cells == "all" or stage == runs.BASE:
            return everything
        (index,) = [s.index for s in self.stages if s.name == stage]
        every = evaluation.full_every
        if index == len(self.stages) - 1 or (every and (index + 1) % every == 0):
            return everything
        return {*self.stages[index].tasks, *self.stages[index + 1].tasks}

    def score_task(self, task: TaskData, stage: str, routed: list[int]) -> TaskScore:
        """One task at one row: routed when the run has a router and this is no base row."""
        ctx = self.ctx
        score = partial(score_shared, ctx.accelerator, ctx.model, ctx.tokenizer)

        def plain(data: TaskData) -> TaskScore:
            return score(data, ctx.recipe.evaluation)

        if stage == runs.BASE:
            return plain(task)
        if ctx.recipe.strategy.routing == "arrow":
            return self.score_arrow(plain, task, stage)
        router = ctx.router
        if router is None:
            return plain(task)
        if task.name not in self.eval_vectors:
            prompts = [example.prompt_ids for example in task.eval]
            self.eval_vectors[task.name] = embed(ctx.model, prompts, ctx.tokenizer.pad_token_id)
        routes = router.route(self.eval_vectors[task.name])
        if task.name in router.tasks:
            routed[0] += routed_correctly(task.name, routes, router.tasks)
            routed[1] += len(routes)
        stage_of = {self.ctx.names[i]: s for s in self.stages for i in s.tasks}

        def serve(target: int) -> None:
            ctx.strategy.serve(ctx.model, stage_of[router.tasks[target]])

        try:
            return score_routed(plain, task, routes, serve, router.tasks)
        finally:
            ctx.strategy.serve(ctx.model, None)

    def score_arrow(
        self, plain: Callable[[TaskData], TaskScore], task: TaskData, stage: str
    ) -> TaskScore:
        """One task scored through PEFT's Arrow over the task LoRAs trained so far."""
        ctx = self.ctx
        (current,) = [s for s in self.stages if s.name == stage]
        experts = ctx.strategy.experts(current)
        try:
            with arrow_served(ctx.model, experts, ctx.recipe.strategy.arrow, ctx.recipe.seed):
                return plain(task)
        finally:
            ctx.strategy.serve(ctx.model, None)

    def learn_routes(self, stage: Stage) -> None:
        """Add the prototypes of the stage's tasks to the router, if the run has one."""
        ctx = self.ctx
        if ctx.router is None:
            return
        for i in stage.tasks:
            prompts = [example.prompt_ids for example in ctx.tasks[i].train[:PROTOTYPE_EXAMPLES]]
            ctx.router.add(ctx.names[i], embed(ctx.model, prompts, ctx.tokenizer.pad_token_id))

    def write_matrix(self) -> None:
        """The matrix as it stands: the CSV contract and its heatmap (main process only)."""
        ctx = self.ctx
        if ctx.main:
            runs.write_matrix(ctx.folder.matrix, ctx.names, self.matrix)
            save_heatmap(ctx.folder.heatmap, ctx.names, self.matrix, ctx.recipe.name)

    def complete(self) -> TrainResult:
        """Compute the metrics, mark the run completed and drop the checkpoint."""
        ctx, state = self.ctx, self.ctx.state
        metrics = stage_metrics(ctx.names, state.stages, self.matrix)
        if ctx.harness is not None:
            metrics["harness"] = harness_changes(ctx.harness.names, self.harness)
        state.status = "completed"
        state.finished_at = runs.now()
        self.stamp_times()
        state.peak_memory_mb = runs.peak_memory_mb()
        if ctx.main:
            runs.write_json(ctx.folder.metrics, metrics)
            runs.write_state(ctx.folder, state)
            shutil.rmtree(ctx.folder.checkpoint, ignore_errors=True)
        if ctx.tracking is not None:
            ctx.tracking.finish(metrics, ctx.folder.heatmap)
        return TrainResult(ctx.folder.root, ctx.names, self.matrix, metrics, state)

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
        state.finished_at = runs.now()
        self.stamp_times()
        with contextlib.suppress(OSError):
            self.ctx.save_state()
        if self.ctx.tracking is not None:
            self.ctx.tracking.close()


def read_rows(path: Path, names: list[str]) -> Matrix:
    """The rows of a matrix (the tasks', or the harness's) that an earlier, unfinished attempt
    of this run already scored."""
    if not path.is_file():
        return {}
    columns, rows = runs.read_matrix(path)
    return rows if columns == names else {}


def trim_log(folder: runs.RunFolder, checkpoint: Checkpoint) -> None:
    """Drop log lines of steps past the checkpoint: they are trained again after resuming."""
    if not folder.train_log.is_file():
        return
    kept = []
    for line in folder.train_log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        position = (entry["task_index"], entry["step"])
        if position <= (checkpoint.stage_index, checkpoint.step):
            kept.append(line + "\n")
    runs.write_text(folder.train_log, "".join(kept))


def completed_result(folder: runs.RunFolder, state: runs.RunState) -> TrainResult:
    """What a finished run wrote, for a command that found nothing left to do."""
    tasks, matrix = runs.read_matrix(folder.matrix)
    metrics = runs.read_json_file(folder.metrics)
    return TrainResult(folder.root, tasks, matrix, metrics, state, already_complete=True)


def run_status(exc: BaseException) -> str:
    if isinstance(exc, Preempted):
        return "preempted"
    if isinstance(exc, Diverged):
        return "diverged"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
