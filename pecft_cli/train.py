"""The task loop: train LoRA task by task, save an adapter after each, score every task each time.

Read `run` and `train_stream` top to bottom: they are the whole of `pecft train`. Everything
that differs between continual-learning strategies happens inside the strategy's hooks, never
in a branch here.

Several processes (`accelerate launch`, `torchrun`) split every global batch between them and
sum their gradients, so they compute what one process computes with the same recipe; the main
process alone writes files. A checkpoint after every `checkpoint_every` steps and at every task
end lets a stopped run continue exactly: running the same command again resumes it.

Progress goes to an `on_event(kind, fields)` callback, so the library never prints. Kinds:
`status` (message), `task_start` (index, total, task, steps, examples), `step` (task, index,
step, steps, loss, lr, tokens_per_s), `task_end` (task, index, seconds, first_loss, last_loss),
`eval` (stage, task, metric, score, seconds).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, get_scheduler

from pecft_cli import runs
from pecft_cli.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_lora_state,
    lora_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pecft_cli.data import TaskData, answer_tokens, training_features
from pecft_cli.dropout import DropoutPlan, example_keys
from pecft_cli.dropout import install as install_dropout
from pecft_cli.errors import Diverged, PecftError, Preempted, bounded
from pecft_cli.evaluate import combine, score_task
from pecft_cli.loss import answer_loss, packs_sequences
from pecft_cli.metrics import stage_metrics
from pecft_cli.model import load_model, load_tokenizer
from pecft_cli.plot import save_heatmap
from pecft_cli.preflight import preflight
from pecft_cli.recipe import Recipe, TrainingSection, dump_recipe, output_dir
from pecft_cli.strategies import build_strategy, strategy_label
from pecft_cli.strategies.base import Strategy

EventCallback = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore(kind: str, fields: dict[str, Any]) -> None:
    """The default progress callback."""


@dataclass
class RunResult:
    folder: Path
    tasks: list[str]
    matrix: dict[str, list[float | None]]
    metrics: dict[str, Any]
    state: dict[str, Any]
    already_complete: bool = False


def run(recipe: Recipe, *, overwrite: bool = False, on_event: EventCallback = ignore) -> RunResult:
    """Train the recipe's tasks in order and write the run folder, or resume an unfinished one."""
    started = time.perf_counter()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_processes(accelerator)
    if not accelerator.is_main_process:
        on_event = ignore
    set_seed(recipe.seed)
    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model)
    tasks = preflight(recipe, tokenizer, accelerator.num_processes).tasks
    names = [task.name for task in tasks]
    strategy = build_strategy(recipe.strategy, recipe.lora, names, recipe.seed)

    root, text = output_dir(recipe), dump_recipe(recipe)
    lock = runs.RunLock(root)

    def claim() -> dict[str, Any] | None:
        runs.check_output_folder(root)
        lock.acquire()
        return runs.claim_run_folder(root, text, overwrite)[1]

    try:
        previous = on_main(accelerator, claim)
        folder = runs.RunFolder(root)
        if previous is not None and previous.get("status") == "completed":
            on_event("status", {"message": f"{root} holds this run already, completed"})
            return completed_result(folder, previous)
        state = previous or runs.new_state(
            recipe.name, recipe.seed, strategy_label(recipe.strategy), names
        )
        if previous is not None:
            on_event("status", {"message": f"resuming the unfinished run in {root}"})
            state["status"], state["error"] = "running", None
            state.setdefault("resumed_at", []).append(runs.now())
            started -= state["timings"].get("wall_seconds") or 0.0  # wall time adds up
        if accelerator.is_main_process:
            runs.write_text(folder.recipe, text)
            runs.write_json(folder.state, state)
        with StopSignals() as stop:
            try:
                return train_stream(
                    accelerator,
                    recipe,
                    tokenizer,
                    tasks,
                    strategy,
                    folder,
                    state,
                    started,
                    stop,
                    on_event,
                )
            except BaseException as exc:
                state["status"] = run_status(exc)
                if not isinstance(exc, Preempted):
                    state["error"] = bounded(f"{type(exc).__name__}: {exc}")
                state["finished_at"] = runs.now()
                state["timings"]["wall_seconds"] = round(time.perf_counter() - started, 2)
                if accelerator.is_main_process:
                    with contextlib.suppress(OSError):  # a full disk must not hide the cause
                        runs.write_json(folder.state, state)
                raise
    finally:
        lock.release()


def train_stream(
    accelerator: Accelerator,
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    strategy: Strategy,
    folder: runs.RunFolder,
    state: dict[str, Any],
    started: float,
    stop: StopSignals,
    on_event: EventCallback,
) -> RunResult:
    """Load the model, score the base row, then train and score stage after stage; a resumed
    run first rebuilds the model and the strategy's memory from the checkpoint."""
    loading = time.perf_counter()
    names = [task.name for task in tasks]
    main = accelerator.is_main_process
    checkpoint = load_checkpoint(folder) if state.get("resumed_at") else None
    if checkpoint is None and state["tasks_done"]:
        raise PecftError(
            f"{folder.root}: the run stopped after {len(state['tasks_done'])} task(s) but left no "
            "checkpoint to resume from; start over with --overwrite."
        )
    if checkpoint is None and state.get("resumed_at") and main:
        runs.write_text(folder.train_log, "")  # nothing was kept: the log starts over too
    on_event("status", {"message": f"loading model {recipe.model.path}"})
    base = load_model(recipe.model, accelerator.device)
    # Seed again here: loading (and a first GGUF conversion) may draw from the random generators,
    # and the LoRA initialisation must not depend on whether the model was already cached.
    set_seed(recipe.seed)
    model = strategy.attach(base)
    trainable, total = parameter_counts(model)
    state["trainable_parameters"] = max(state.get("trainable_parameters") or 0, trainable)
    state["total_parameters"] = total
    state["processes"] = accelerator.num_processes
    state["dtype"] = str(model.dtype).removeprefix("torch.")
    state["timings"]["load_seconds"] = round(time.perf_counter() - loading, 2)

    matrix = read_rows(folder, names) if checkpoint is not None else {}
    if "base" not in matrix:
        with model.disable_adapter():
            matrix["base"] = evaluate_stage(
                accelerator, model, tokenizer, tasks, recipe, folder, "base", state, stop, on_event
            )
        if main:
            write_matrix(folder, names, matrix, recipe.name)

    stages = strategy.stages(names)
    state["stages"] = [stage for stage, _ in stages]
    first = 0
    if checkpoint is not None:
        first = checkpoint.stage_index
        # What finished is what the matrix holds: a kill may fall between a row and the state.
        state["tasks_done"] = [
            names[i] for stage, members in stages[:first] if stage in matrix for i in members
        ]
        if not checkpoint.mid_stage and first > 0:
            stage = stages[first - 1][0]
            state["training"].setdefault(stage, checkpoint.progress.get("summary"))
        for index in range(first):
            strategy.before_task(model, index)
        strategy.load_state_dict(checkpoint.strategy)
        if main:
            trim_log(folder, checkpoint)
        if not checkpoint.mid_stage:  # else train_task restores the stage's own adapter too
            load_lora_state(model, checkpoint.lora, folder.checkpoint)
            set_rng_state(checkpoint.rng[accelerator.process_index % len(checkpoint.rng)])
            if first > 0 and stages[first - 1][0] not in matrix:
                finish_stage(
                    accelerator,
                    model,
                    tokenizer,
                    tasks,
                    recipe,
                    folder,
                    state,
                    matrix,
                    first - 1,
                    stages,
                    stop,
                    on_event,
                )
    for index in range(first, len(stages)):
        stage, members = stages[index]
        settings = recipe.stage_training([recipe.tasks[i] for i in members])
        strategy.before_task(model, index)
        memory = strategy.state_dict()
        own = [example for i in members for example in tasks[i].train]
        examples = strategy.train_examples(index, own)
        resume = checkpoint if checkpoint and checkpoint.stage_index == index else None
        summary = train_task(
            accelerator,
            model,
            tokenizer,
            strategy,
            stage,
            index,
            len(stages),
            examples,
            settings,
            recipe.seed + index,
            folder,
            memory,
            resume if resume and resume.mid_stage else None,
            stop,
            on_event,
        )
        strategy.after_task(model, index, examples)
        if main:  # exporting may build a temporary adapter; keep the processes' RNGs equal
            with torch.random.fork_rng(devices=cuda_devices(accelerator)):
                runs.write_folder(
                    folder.adapter(index, stage), partial(strategy.save_adapter, model, index)
                )
                strategy.save_extras(model, index, folder.root)
        state["training"][stage] = summary
        state["timings"]["train_seconds"][stage] = summary["seconds"]
        state["trainable_parameters"] = max(
            state["trainable_parameters"], summary["trainable_parameters"]
        )
        boundary = Checkpoint(
            index + 1,
            0,
            lora_state(model),
            strategy.state_dict(),
            [],
            progress={"summary": summary},
        )
        write_checkpoint(accelerator, folder, stage, boundary)
        if main:
            runs.write_json(folder.state, state)
        finish_stage(
            accelerator,
            model,
            tokenizer,
            tasks,
            recipe,
            folder,
            state,
            matrix,
            index,
            stages,
            stop,
            on_event,
        )
        if stop.requested(accelerator) and index + 1 < len(stages):
            raise Preempted(f"stopped after {stage}")

    metrics = stage_metrics(names, state["stages"], matrix)
    state["status"] = "completed"
    state["finished_at"] = runs.now()
    state["timings"]["wall_seconds"] = round(time.perf_counter() - started, 2)
    state["peak_memory_mb"] = runs.peak_memory_mb()
    if main:
        runs.write_json(folder.metrics, metrics)
        runs.write_json(folder.state, state)
        shutil.rmtree(folder.checkpoint, ignore_errors=True)
    return RunResult(folder.root, names, matrix, metrics, state)


def finish_stage(
    accelerator: Accelerator,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    recipe: Recipe,
    folder: runs.RunFolder,
    state: dict[str, Any],
    matrix: dict[str, list[float | None]],
    index: int,
    stages: list[tuple[str, list[int]]],
    stop: StopSignals,
    on_event: EventCallback,
) -> None:
    """Score every task after stage `index` and record the row: the stage is then done."""
    stage, members = stages[index]
    names = [task.name for task in tasks]
    matrix[stage] = evaluate_stage(
        accelerator, model, tokenizer, tasks, recipe, folder, stage, state, stop, on_event
    )
    state["tasks_done"] += [names[i] for i in members]
    if accelerator.is_main_process:
        write_matrix(folder, names, matrix, recipe.name)
        runs.write_json(folder.state, state)


def train_task(
    accelerator: Accelerator,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    strategy: Strategy,
    name: str,
    index: int,
    total: int,
    examples: list,
    settings: TrainingSection,
    seed: int,
    folder: runs.RunFolder,
    memory: dict[str, Any],
    resume: Checkpoint | None,
    stop: StopSignals,
    on_event: EventCallback,
) -> dict[str, Any]:
    """Optimise the trainable LoRA weights on one stage's examples; returns the stage's summary.

    The loader yields global batches in a seeded order; each process trains on its share of
    every batch, the loss is the mean over the global batch's answer tokens, and the gradients
    are summed over processes, so the number of processes does not change the result.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        [training_features(example) for example in examples],
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=list,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.max_steps or math.ceil(len(loader) / settings.grad_accum) * settings.epochs
    scheduler = get_scheduler(settings.scheduler, optimizer, settings.warmup_steps, steps)
    batches = endless(loader)
    done, progress = 0, {"losses": [], "tokens": 0, "seconds": 0.0}
    if resume is not None:
        load_lora_state(model, resume.lora, folder.checkpoint)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        for _ in range(resume.step * settings.grad_accum):
            next(batches)
        set_rng_state(resume.rng[accelerator.process_index % len(resume.rng)])
        done, progress = resume.step, resume.progress
    on_event(
        "task_start",
        {"index": index, "total": total, "task": name, "steps": steps, "examples": len(examples)},
    )

    set_gradient_checkpointing(model, settings.gradient_checkpointing, name)
    model.train()
    pad_id = None if packs_sequences(model) else tokenizer.pad_token_id
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    window_loss, window_extra, window_tokens = 0.0, None, 0
    window_start = segment_start = time.perf_counter()
    plan = DropoutPlan()
    install_dropout(model, plan)
    for step in range(done + 1, steps + 1):
        for micro in range(settings.grad_accum):
            share = next(batches)[rank::world]
            targets = sum(answer_tokens(f) for f in share)
            global_targets = reduce_sum(accelerator, targets)
            keys = example_keys(
                seed, step, micro, list(range(rank, rank + world * len(share), world))
            )
            lengths = [len(f["input_ids"]) for f in share]
            with plan.examples(keys, lengths, packed=pad_id is None):
                loss = torch.zeros((), device=device)
                if share:
                    loss = answer_loss(model, share, pad_id)
                    loss = loss * (targets / global_targets)
                    window_tokens += sum(lengths)
                extra = strategy.extra_loss(model, index)
                total_loss = loss if extra is None else loss + extra / world
                if total_loss.requires_grad:
                    (total_loss / settings.grad_accum).backward()
            window_loss += loss.item() / settings.grad_accum
            if extra is not None:
                window_extra = (window_extra or 0.0) + extra.item() / settings.grad_accum
        sum_gradients(accelerator, trainable)
        norm = torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        if not torch.isfinite(norm):  # the same on every process: the gradients are summed
            raise Diverged(divergence(name, step, steps, float(norm), settings))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if step % settings.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window_start
            logged = step % settings.log_every or settings.log_every
            tokens = reduce_sum(accelerator, window_tokens)
            entry = {
                "task": name,
                "task_index": index,
                "step": step,
                "steps": steps,
                "loss": round(reduce_sum(accelerator, window_loss) / logged, 5),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": round(tokens / elapsed, 1),
            }
            if window_extra is not None:
                entry["extra_loss"] = round(window_extra / logged, 5)
            progress["losses"].append(entry["loss"])
            progress["tokens"] += int(tokens)
            if accelerator.is_main_process:
                runs.append_jsonl(folder.train_log, entry)
            on_event("step", entry)
            window_loss, window_extra, window_tokens = 0.0, None, 0
            window_start = time.perf_counter()

        stopping = stop.requested(accelerator)
        every = settings.checkpoint_every
        if step < steps and (stopping or (every and step % every == 0)):
            progress["seconds"] += time.perf_counter() - segment_start
            segment_start = time.perf_counter()
            write_checkpoint(
                accelerator,
                folder,
                name,
                Checkpoint(
                    index,
                    step,
                    lora_state(model),
                    memory,
                    [],
                    optimizer.state_dict(),
                    scheduler.state_dict(),
                    progress,
                ),
            )
            if stopping:
                raise Preempted(f"stopped at step {step} of {name}")

    seconds = progress["seconds"] + time.perf_counter() - segment_start
    summary = {
        "trainable_parameters": sum(p.numel() for p in trainable),
        "steps": steps,
        "examples": len(examples),
        "tokens": progress["tokens"],
        "tokens_per_s": round(progress["tokens"] / seconds, 1),
        "first_loss": progress["losses"][0],
        "last_loss": progress["losses"][-1],
        "seconds": round(seconds, 2),
    }
    on_event("task_end", {"task": name, "index": index, **summary})
    return summary


def set_gradient_checkpointing(model: PeftModel, enabled: bool, task: str) -> None:
    """Turn activation recomputation on or off for this task's training."""
    if not enabled:
        model.gradient_checkpointing_disable()
        return
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    except ValueError:
        raise PecftError(
            f"training.gradient_checkpointing (task '{task}'): this {model.config.model_type} "
            "model does not support gradient checkpointing; set it to false."
        ) from None


def reduce_sum(accelerator: Accelerator, value: float) -> float:
    """A number summed over all processes (itself, with one process)."""
    if accelerator.num_processes == 1:
        return value
    total = accelerator.reduce(torch.tensor(float(value), device=accelerator.device), "sum")
    return float(total)


def sum_gradients(accelerator: Accelerator, parameters: list[torch.nn.Parameter]) -> None:
    """Add up every process's gradients in one flat all-reduce."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), "sum")
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter).clone()
        offset += count


def endless(loader: DataLoader) -> Iterator[list[dict[str, list[int]]]]:
    """Global batches across as many epochs as the step count needs, reshuffled each epoch."""
    while True:
        yield from loader


def write_checkpoint(
    accelerator: Accelerator, folder: runs.RunFolder, stage: str, checkpoint: Checkpoint
) -> None:
    """Collect every process's random generators, then let the main process publish."""
    states = [rng_state()]
    checkpoint.rng = gather_object(states) if accelerator.num_processes > 1 else states
    if accelerator.is_main_process:
        save_checkpoint(folder, checkpoint, stage)
    accelerator.wait_for_everyone()


def evaluate_stage(
    accelerator: Accelerator,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    recipe: Recipe,
    folder: runs.RunFolder,
    stage: str,
    state: dict[str, Any],
    stop: StopSignals,
    on_event: EventCallback,
) -> list[float | None]:
    """Score every task with the model as it stands; one row of the matrix.

    Each process scores its share of the batches; scoring draws no random numbers that
    training would see, so a resumed run trains on as an uninterrupted one does.
    """
    started = time.perf_counter()
    shard = (accelerator.process_index, accelerator.num_processes)
    row: list[float | None] = []
    with torch.random.fork_rng(devices=cuda_devices(accelerator)):
        for task in tasks:
            task_started = time.perf_counter()
            result = score_task(model, tokenizer, task, recipe.evaluation, shard)
            if accelerator.num_processes > 1:
                result = combine(gather_object([result]))
            if accelerator.is_main_process:
                runs.write_jsonl(folder.predictions(stage, task.name), result.predictions)
            on_event("eval", result.event(stage, time.perf_counter() - task_started))
            row.append(result.score)
            if stop.requested(accelerator):
                raise Preempted(f"stopped while scoring after {stage}")
    state["timings"]["eval_seconds"][stage] = round(time.perf_counter() - started, 2)
    return row


def cuda_devices(accelerator: Accelerator) -> list[torch.device]:
    """The devices whose generators `fork_rng` must save and restore besides the CPU's."""
    return [accelerator.device] if accelerator.device.type == "cuda" else []


def write_matrix(
    folder: runs.RunFolder, names: list[str], matrix: dict[str, list[float | None]], title: str
) -> None:
    """The matrix as it stands after a stage: the CSV contract and its heatmap."""
    runs.write_matrix(folder.matrix, names, matrix)
    save_heatmap(folder.heatmap, names, matrix, title)


def read_rows(folder: runs.RunFolder, names: list[str]) -> dict[str, list[float | None]]:
    """The matrix rows an earlier, unfinished attempt of this run already scored."""
    if not folder.matrix.is_file():
        return {}
    columns, rows = runs.read_matrix(folder.matrix)
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


class StopSignals:
    """SIGTERM and SIGUSR1, which schedulers send before preemption, ask the run to checkpoint
    at the next step boundary and stop; every process stops at the same step."""

    def __init__(self) -> None:
        self.flag = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, number: int, frame: Any) -> None:
        self.flag = True

    def requested(self, accelerator: Accelerator) -> bool:
        return reduce_sum(accelerator, float(self.flag)) > 0


def check_processes(accelerator: Accelerator) -> None:
    """Refuse processes that were launched together but did not form one group: each would
    repeat the whole run on its own."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise PecftError(
            f"this launch asks for {accelerator.distributed_type.value}, which shards the model "
            "across processes; pecft trains data-parallel (every process holds the whole base "
            "model, optionally 4-bit, and LoRA gradients are summed). Launch with the DDP config "
            "(cli/accelerate/ddp.yaml) or `pecft train --num-processes N`."
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise PecftError(
            f"this process was launched as one of {launched}, but they did not join one process "
            f"group (it sees {accelerator.num_processes}), so each would repeat the whole run. "
            "Launch with `pecft train --num-processes N`, or with torchrun or `accelerate "
            "launch --multi_gpu` (on a host without GPUs, with ACCELERATE_USE_CPU=1)."
        )


def on_main(accelerator: Accelerator, action: Callable[[], T]) -> T:
    """Run `action` on the main process only and hand its result, or its error, to every one."""
    outcome: tuple[str, Any] = ("ok", None)
    if accelerator.is_main_process:
        try:
            outcome = ("ok", action())
        except PecftError as exc:
            outcome = ("error", str(exc))
            if accelerator.num_processes == 1:
                raise
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list([outcome])[0]
    if outcome[0] == "error":
        raise PecftError(outcome[1])
    return outcome[1]


def completed_result(folder: runs.RunFolder, state: dict[str, Any]) -> RunResult:
    """What a finished run wrote, for a command that found nothing left to do."""
    tasks, matrix = runs.read_matrix(folder.matrix)
    metrics = runs.read_json_file(folder.metrics)
    return RunResult(folder.root, tasks, matrix, metrics, state, already_complete=True)


def divergence(name: str, step: int, steps: int, norm: float, settings: TrainingSection) -> str:
    """What happened at the step whose gradients are not finite, and what to do about it."""
    kind = "NaN" if math.isnan(norm) else "infinite"
    return (
        f"task '{name}' diverged at step {step} of {steps}: its gradients became {kind} "
        f"(training.lr {settings.lr:g}, max_grad_norm {settings.max_grad_norm:g}). The step was "
        "not applied and no adapter was written for this task; the run folder keeps the earlier "
        "tasks' adapters and its last checkpoint, from which the same command would diverge "
        "again. Lower training.lr or add warmup_steps, then start again with --overwrite or "
        "another output_dir."
    )


def run_status(exc: BaseException) -> str:
    if isinstance(exc, Preempted):
        return "preempted"
    if isinstance(exc, Diverged):
        return "diverged"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
