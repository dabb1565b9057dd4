"""The task loop: train LoRA task by task, save an adapter after each, score every task each time.

Read `run` top to bottom: it is the whole of `pecft train`. Everything that differs between
continual-learning strategies happens inside the strategy's hooks, never in a branch here.

Progress goes to an `on_event(kind, fields)` callback, so the library never prints. Kinds:
`status` (message), `task_start` (index, total, task, steps, examples), `step` (task, index,
step, steps, loss, lr, tokens_per_s), `task_end` (task, index, seconds, first_loss, last_loss),
`eval` (stage, task, metric, score, seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, get_scheduler

from pecft_cli import runs
from pecft_cli.data import TaskData, collate, load_task, training_features
from pecft_cli.evaluate import score_task
from pecft_cli.metrics import stage_metrics
from pecft_cli.model import load_model, load_tokenizer
from pecft_cli.plot import save_heatmap
from pecft_cli.recipe import Recipe, TrainingSection, dump_recipe, output_dir
from pecft_cli.strategies import build_strategy, strategy_label
from pecft_cli.strategies.base import Strategy

EventCallback = Callable[[str, dict[str, Any]], None]


def ignore(kind: str, fields: dict[str, Any]) -> None:
    """The default progress callback."""


@dataclass
class RunResult:
    folder: Path
    tasks: list[str]
    matrix: dict[str, list[float | None]]
    metrics: dict[str, Any]
    state: dict[str, Any]


def prepare_tasks(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> list[TaskData]:
    """Every task's data, read and checked before anything is written or trained."""
    return [load_task(task, recipe, tokenizer) for task in recipe.tasks]


def run(recipe: Recipe, *, overwrite: bool = False, on_event: EventCallback = ignore) -> RunResult:
    """Train the recipe's tasks in order and write the run folder."""
    started = time.perf_counter()
    set_seed(recipe.seed)
    on_event("status", {"message": "loading tokenizer and data"})
    tokenizer = load_tokenizer(recipe.model)
    tasks = prepare_tasks(recipe, tokenizer)
    names = [task.name for task in tasks]
    strategy = build_strategy(recipe.strategy, recipe.lora, names, recipe.seed)

    folder = runs.open_run_folder(output_dir(recipe), overwrite)
    runs.write_text(folder.recipe, dump_recipe(recipe))
    state = runs.new_state(recipe.name, recipe.seed, strategy_label(recipe.strategy), names)
    runs.write_json(folder.state, state)
    try:
        return train_stream(recipe, tokenizer, tasks, strategy, folder, state, started, on_event)
    except BaseException as exc:
        state["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        state["error"] = f"{type(exc).__name__}: {exc}"
        state["finished_at"] = runs.now()
        runs.write_json(folder.state, state)
        raise


def train_stream(
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    strategy: Strategy,
    folder: runs.RunFolder,
    state: dict[str, Any],
    started: float,
    on_event: EventCallback,
) -> RunResult:
    """Load the model, score the base row, then train and score task after task."""
    names = [task.name for task in tasks]
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    on_event("status", {"message": f"loading model {recipe.model.path}"})
    base = load_model(recipe.model, accelerator.device)
    # Seed again here: loading (and a first GGUF conversion) may draw from the random generators,
    # and the LoRA initialisation must not depend on whether the model was already cached.
    set_seed(recipe.seed)
    model = strategy.attach(base)
    model = accelerator.prepare(model)
    state["trainable_parameters"], state["total_parameters"] = parameter_counts(model)
    state["timings"]["load_seconds"] = round(time.perf_counter() - started, 2)

    matrix: dict[str, list[float | None]] = {}
    with accelerator.unwrap_model(model).disable_adapter():
        matrix["base"] = evaluate_stage(
            accelerator, model, tokenizer, tasks, recipe, folder, "base", state, on_event
        )
    write_matrix(folder, names, matrix, recipe.name)

    stages = strategy.stages(names)
    state["stages"] = [stage for stage, _ in stages]
    for index, (stage, members) in enumerate(stages):
        settings = recipe.stage_training([recipe.tasks[i] for i in members])
        strategy.before_task(accelerator.unwrap_model(model), index)
        own = [example for i in members for example in tasks[i].train]
        examples = strategy.train_examples(index, own)
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
            on_event,
        )
        strategy.after_task(accelerator.unwrap_model(model), index, examples)

        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            runs.write_folder(
                folder.adapter(index, stage), partial(strategy.save_adapter, unwrapped, index)
            )
            strategy.save_extras(unwrapped, index, folder.root)
        state["training"][stage] = summary
        state["timings"]["train_seconds"][stage] = summary["seconds"]
        state["trainable_parameters"] = max(
            state["trainable_parameters"], summary["trainable_parameters"]
        )

        matrix[stage] = evaluate_stage(
            accelerator, model, tokenizer, tasks, recipe, folder, stage, state, on_event
        )
        write_matrix(folder, names, matrix, recipe.name)
        state["tasks_done"] += [names[i] for i in members]
        runs.write_json(folder.state, state)

    metrics = stage_metrics(names, state["stages"], matrix)
    runs.write_json(folder.metrics, metrics)
    state["status"] = "completed"
    state["finished_at"] = runs.now()
    state["timings"]["wall_seconds"] = round(time.perf_counter() - started, 2)
    state["peak_memory_mb"] = runs.peak_memory_mb()
    runs.write_json(folder.state, state)
    return RunResult(folder.root, names, matrix, metrics, state)


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
    on_event: EventCallback,
) -> dict[str, Any]:
    """Optimise the trainable LoRA weights on one task's examples; returns the task's summary."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        [training_features(example) for example in examples],
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    steps = settings.max_steps or math.ceil(len(loader) / settings.grad_accum) * settings.epochs
    scheduler = get_scheduler(settings.scheduler, optimizer, settings.warmup_steps, steps)
    on_event(
        "task_start",
        {"index": index, "total": total, "task": name, "steps": steps, "examples": len(examples)},
    )

    model.train()
    batches = endless(loader)
    losses: list[float] = []
    window_loss, window_extra, window_tokens = 0.0, None, 0
    window_start = task_start = time.perf_counter()
    task_tokens = 0
    for step in range(1, steps + 1):
        for _ in range(settings.grad_accum):
            batch = next(batches)
            loss = model(**batch).loss
            extra = strategy.extra_loss(accelerator.unwrap_model(model), index)
            total_loss = loss if extra is None else loss + extra
            accelerator.backward(total_loss / settings.grad_accum)
            window_loss += loss.item() / settings.grad_accum
            if extra is not None:
                window_extra = (window_extra or 0.0) + extra.item() / settings.grad_accum
            window_tokens += int(batch["attention_mask"].sum())
        accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if step % settings.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window_start
            logged = step % settings.log_every or settings.log_every
            entry = {
                "task": name,
                "task_index": index,
                "step": step,
                "steps": steps,
                "loss": round(window_loss / logged, 5),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": round(window_tokens / elapsed, 1),
            }
            if window_extra is not None:
                entry["extra_loss"] = round(window_extra / logged, 5)
            losses.append(entry["loss"])
            task_tokens += window_tokens
            if accelerator.is_main_process:
                runs.append_jsonl(folder.train_log, entry)
            on_event("step", entry)
            window_loss, window_extra, window_tokens = 0.0, None, 0
            window_start = time.perf_counter()

    seconds = time.perf_counter() - task_start
    summary = {
        "trainable_parameters": sum(p.numel() for p in trainable),
        "steps": steps,
        "examples": len(examples),
        "tokens": task_tokens,
        "tokens_per_s": round(task_tokens / seconds, 1),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "seconds": round(seconds, 2),
    }
    on_event("task_end", {"task": name, "index": index, **summary})
    return summary


def endless(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches across as many epochs as the step count needs, reshuffled each epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def evaluate_stage(
    accelerator: Accelerator,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    recipe: Recipe,
    folder: runs.RunFolder,
    stage: str,
    state: dict[str, Any],
    on_event: EventCallback,
) -> list[float | None]:
    """Score every task with the model as it stands; one row of the matrix."""
    started = time.perf_counter()
    unwrapped = accelerator.unwrap_model(model)
    row: list[float | None] = []
    for task in tasks:
        task_started = time.perf_counter()
        result = score_task(unwrapped, tokenizer, task, recipe.evaluation)
        if accelerator.is_main_process:
            runs.write_jsonl(folder.predictions(stage, task.name), result.predictions)
        on_event("eval", result.event(stage, time.perf_counter() - task_started))
        row.append(result.score)
    state["timings"]["eval_seconds"][stage] = round(time.perf_counter() - started, 2)
    return row


def write_matrix(
    folder: runs.RunFolder, names: list[str], matrix: dict[str, list[float | None]], title: str
) -> None:
    """The matrix as it stands after a stage: the CSV contract and its heatmap."""
    runs.write_matrix(folder.matrix, names, matrix)
    save_heatmap(folder.heatmap, names, matrix, title)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
