"""Optimising one stage: the loop over steps, with logging and mid-stage checkpoints.

The loader yields global batches in a seeded order; each process trains on its share of every
batch, the loss is the mean over the global batch's answer tokens, and the gradients are summed
over processes, so the number of processes does not change the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import get_scheduler

from pecft_cli.data.batch import answer_tokens, training_features
from pecft_cli.data.tasks import Example
from pecft_cli.errors import Diverged, PecftError, Preempted
from pecft_cli.model.loss import answer_logits, cross_entropy, packs_sequences
from pecft_cli.parallel.distributed import reduce_sum, sum_gradients
from pecft_cli.recipe.sections import TrainingSection
from pecft_cli.runfolder.atomic import append_jsonl
from pecft_cli.runfolder.state import peak_memory_mb
from pecft_cli.strategies.base import Stage
from pecft_cli.training.checkpoint import (
    Checkpoint,
    load_lora_state,
    lora_state,
    set_rng_state,
    write_checkpoint,
)
from pecft_cli.training.context import RunContext
from pecft_cli.training.dropout import DropoutPlan, example_keys
from pecft_cli.training.dropout import install as install_dropout


@dataclass
class StagePlan:
    """What one stage trains on and how: its examples (replay mixed in), its settings, its seed,
    the memory a mid-stage checkpoint records, and the checkpoint it resumes from, if any."""

    stage: Stage
    total: int
    first_step: int  # optimizer steps of the stages before this one, over the whole stream
    examples: list[Example]
    settings: TrainingSection
    seed: int
    memory: dict[str, dict[str, Any]]
    resume: Checkpoint | None = None


class StageTrainer:
    """The optimizer, scheduler and batch stream of one stage, and the steps that use them."""

    def __init__(self, ctx: RunContext, plan: StagePlan) -> None:
        self.ctx, self.plan, self.model = ctx, plan, ctx.model
        settings = plan.settings
        loader = DataLoader(
            [training_features(example) for example in plan.examples],
            batch_size=settings.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(plan.seed),
            collate_fn=list,
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.steps = (
            settings.max_steps or math.ceil(len(loader) / settings.grad_accum) * settings.epochs
        )
        self.scheduler = get_scheduler(
            settings.scheduler, self.optimizer, settings.warmup_steps, self.steps
        )
        self.batches = endless(loader)
        self.done, self.progress = 0, {"losses": [], "tokens": 0, "seconds": 0.0}
        if plan.resume is not None:
            self.restore(plan.resume)
        self.pad_id: int | None = None
        self.dropout = DropoutPlan()
        self.window = Window()

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a mid-stage checkpoint: weights, optimizer, position, generators."""
        load_lora_state(self.model, checkpoint.lora, self.ctx.folder.checkpoint)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        for _ in range(checkpoint.step * self.plan.settings.grad_accum):
            next(self.batches)
        accelerator = self.ctx.accelerator
        set_rng_state(checkpoint.rng[accelerator.process_index % len(checkpoint.rng)])
        self.done, self.progress = checkpoint.step, checkpoint.progress

    def train(self) -> dict[str, Any]:
        """Run the stage's remaining steps; returns its summary."""
        stage, settings = self.plan.stage, self.plan.settings
        self.ctx.on_event(
            "task_start",
            {
                "index": stage.index,
                "total": self.plan.total,
                "task": stage.name,
                "steps": self.steps,
                "first_step": self.plan.first_step,
                "examples": len(self.plan.examples),
            },
        )
        set_gradient_checkpointing(self.model, settings.gradient_checkpointing, stage.name)
        self.model.train()
        self.pad_id = None if packs_sequences(self.model) else self.ctx.tokenizer.pad_token_id
        self.window.restart()
        segment_start = time.perf_counter()
        install_dropout(self.model, self.dropout)
        for step in range(self.done + 1, self.steps + 1):
            self.optimizer_step(step)
            if step == 1 or step % settings.log_every == 0 or step == self.steps:
                self.log(step)  # step 1 too: a stage's first loss is its starting point
            stopping = self.ctx.stop.requested(self.ctx.accelerator)
            if self.wants_checkpoint(step, stopping):
                self.progress["seconds"] += time.perf_counter() - segment_start
                segment_start = time.perf_counter()
                self.checkpoint(step)
                if stopping:
                    raise Preempted(f"stopped at step {step} of {stage.name}")
        seconds = self.progress["seconds"] + time.perf_counter() - segment_start
        summary = self.summary(seconds)
        self.ctx.on_event("task_end", {"task": stage.name, "index": stage.index, **summary})
        return summary

    def optimizer_step(self, step: int) -> None:
        """One optimizer step over `grad_accum` micro-batches of every process's share."""
        settings = self.plan.settings
        for micro in range(settings.grad_accum):
            self.micro_batch(step, micro)
        sum_gradients(self.ctx.accelerator, self.trainable)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, settings.max_grad_norm)
        if not torch.isfinite(norm):  # the same on every process: the gradients are summed
            raise Diverged(
                divergence(self.plan.stage.name, step, self.steps, float(norm), settings)
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.steps += 1

    def micro_batch(self, step: int, micro: int) -> None:
        """Forward and backward on this process's share of one micro-batch."""
        accelerator, settings = self.ctx.accelerator, self.plan.settings
        rank, world = accelerator.process_index, accelerator.num_processes
        rows = next(self.batches)
        share = rows[rank::world]
        targets = sum(answer_tokens(f) for f in share)
        global_targets = reduce_sum(accelerator, targets)
        if not share and self.ctx.sharded:
            # A sharded forward pass is a collective: run the batch's first example, its loss
            # weighted by the zero answer tokens this process has.
            share = rows[:1]
        positions = list(range(rank, rank + world * len(share), world))
        keys = example_keys(self.plan.seed, step, micro, positions)
        lengths = [len(f["input_ids"]) for f in share]
        strategy, stage = self.ctx.strategy, self.plan.stage
        with self.dropout.examples(keys, lengths, packed=self.pad_id is None):
            loss, term = torch.zeros((), device=accelerator.device), None
            if share:
                batch = answer_logits(self.model, share, self.pad_id)
                loss = cross_entropy(batch) * (targets / global_targets)
                self.window.tokens += sum(lengths) if targets else 0
                term = strategy.batch_loss(self.model, stage, batch)
                term = term if term is None or targets else term * 0.0
            extra = strategy.extra_loss(self.model, stage)
            total_loss = loss if extra is None else loss + extra / world
            if term is not None:
                term = term / global_targets
                total_loss = total_loss + term
            if total_loss.requires_grad:
                (total_loss / settings.grad_accum).backward()
        self.window.loss += loss.item() / settings.grad_accum
        if extra is not None:
            self.window.extra = (self.window.extra or 0.0) + extra.item() / settings.grad_accum
        if term is not None:
            self.window.batch_term += term.item() / settings.grad_accum

    def log(self, step: int) -> None:
        """One line of logs/train.jsonl: the means over the steps since the last line."""
        accelerator, stage = self.ctx.accelerator, self.plan.stage
        elapsed = time.perf_counter() - self.window.start
        logged = self.window.steps
        tokens = reduce_sum(accelerator, self.window.tokens)
        entry = {
            "task": stage.name,
            "task_index": stage.index,
            "step": step,
            "steps": self.steps,
            "loss": round(reduce_sum(accelerator, self.window.loss) / logged, 5),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": round(tokens / elapsed, 1),
        }
        if self.window.extra is not None:
            entry["extra_loss"] = round(self.window.extra / logged, 5)
        name = self.ctx.strategy.batch_loss_name
        if name is not None:  # every process has the name, so every one joins the sum
            entry[name] = round(reduce_sum(accelerator, self.window.batch_term) / logged, 5)
        self.progress["losses"].append(entry["loss"])
        self.progress["tokens"] += int(tokens)
        if self.ctx.main:
            append_jsonl(self.ctx.folder.train_log, entry)
        self.ctx.on_event("step", entry)
        self.window.restart()

    def wants_checkpoint(self, step: int, stopping: bool) -> bool:
        """Every `checkpoint_every` steps, or now when a stop was asked (not at the last step:
        the stage's end writes its own)."""
        every = self.plan.settings.checkpoint_every
        return step < self.steps and (stopping or bool(every and step % every == 0))

    def checkpoint(self, step: int) -> None:
        """Write a mid-stage checkpoint: the stage can continue from this step."""
        stage, memory = self.plan.stage, self.plan.memory
        checkpoint = Checkpoint(
            stage_index=stage.index,
            step=step,
            lora=lora_state(self.model),
            strategy=memory["strategy"],
            replay=memory["replay"],
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            progress=self.progress,
        )
        write_checkpoint(self.ctx.accelerator, self.ctx.folder, checkpoint, stage.name)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "trainable_parameters": sum(p.numel() for p in self.trainable),
            "steps": self.steps,
            "examples": len(self.plan.examples),
            "tokens": self.progress["tokens"],
            "tokens_per_s": round(self.progress["tokens"] / seconds, 1),
            "first_loss": self.progress["losses"][0],
            "last_loss": self.progress["losses"][-1],
            "seconds": round(seconds, 2),
            "peak_memory_mb": peak_memory_mb(),  # the process's peak so far
        }


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    loss: float = 0.0
    extra: float | None = None
    batch_term: float = 0.0
    tokens: int = 0
    steps: int = 0
    start: float = 0.0

    def restart(self) -> None:
        self.loss, self.extra, self.batch_term, self.tokens, self.steps = 0.0, None, 0.0, 0, 0
        self.start = time.perf_counter()


def endless(loader: DataLoader) -> Iterator[list[dict[str, list[int]]]]:
    """Global batches across as many epochs as the step count needs, reshuffled each epoch."""
    while True:
        yield from loader


def set_gradient_checkpointing(model: PeftModel, enabled: bool, stage: str) -> None:
    """Turn activation recomputation on or off for this stage's training.

    transformers 5 calls it activation checkpointing and warns at the old names, which 4.x has
    alone: take whichever the installed version has under its current name.
    """
    base = model.get_base_model()
    name = "activation" if hasattr(base, "activation_checkpointing_enable") else "gradient"
    if not enabled:
        getattr(base, f"{name}_checkpointing_disable")()
        return
    try:
        enable = getattr(base, f"{name}_checkpointing_enable")
        enable(**{f"{name}_checkpointing_kwargs": {"use_reentrant": False}})
    except ValueError:
        raise PecftError(
            f"training.gradient_checkpointing (task '{stage}'): this {model.config.model_type} "
            "model does not support gradient checkpointing; set it to false."
        ) from None


def divergence(stage: str, step: int, steps: int, norm: float, settings: TrainingSection) -> str:
    """What happened at the step whose gradients are not finite, and what to do about it."""
    kind = "NaN" if math.isnan(norm) else "infinite"
    return (
        f"task '{stage}' diverged at step {step} of {steps}: its gradients became {kind} "
        f"(training.lr {settings.lr:g}, max_grad_norm {settings.max_grad_norm:g}). The step was "
        "not applied and no adapter was written for this task; the run folder keeps the earlier "
        "tasks' adapters and its last checkpoint, from which the same command would diverge "
        "again. Lower training.lr or add warmup_steps, then start again with --overwrite or "
        "another output_dir."
    )
