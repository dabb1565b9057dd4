"""Experience replay: keep some examples of every finished task and mix them into later tasks.

Combines with any strategy that changes the LoRA structure (seq, inclora, olora): the recipe's
`strategy.replay` section wraps that strategy. `strategy.name: replay` is seq with replay.

- Which examples: `per_task` examples or a `fraction` of each task (balanced over tasks), or a
  reservoir of `size` examples over the whole stream (tasks in proportion to their size).
- How many in a task's training: all of the buffer, or, with `ratio`, as many as make that share
  of the mixed examples (drawn with replacement when the buffer is smaller).
The selection is seeded, and the buffer is written to replay/buffer.jsonl after every task.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from peft import PeftModel
from pydantic import Field, model_validator
from transformers import PreTrainedModel

from pecft_cli import runs
from pecft_cli.data import Example
from pecft_cli.recipe import COUNT_LIMIT, Section
from pecft_cli.strategies.base import Strategy


class ReplayOptions(Section):
    """How many examples to keep and how much of later tasks' training they make up."""

    selection: Literal["balanced", "reservoir"] = "balanced"
    per_task: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="examples kept of each task (balanced)"
    )
    fraction: float | None = Field(None, gt=0, le=1, description="share kept of each task")
    size: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="reservoir capacity over all tasks"
    )
    ratio: float | None = Field(None, gt=0, lt=1, description="replayed share of the training mix")

    @model_validator(mode="after")
    def _one_budget(self) -> ReplayOptions:
        if self.selection == "reservoir":
            if self.size is None or self.per_task is not None or self.fraction is not None:
                raise ValueError("reservoir replay takes `size` (the buffer capacity) only")
        elif (self.per_task is None) == (self.fraction is None) or self.size is not None:
            raise ValueError(
                "balanced replay (the default selection) takes exactly one of `per_task` or "
                "`fraction`; `size` goes with `selection: reservoir`"
            )
        return self


class Replay(Strategy):
    """Wraps another strategy: its hooks run unchanged, with replayed examples mixed in."""

    Options = ReplayOptions

    def __init__(self, inner: Strategy, options: ReplayOptions) -> None:
        super().__init__(options, inner.lora, inner.tasks, inner.seed)
        self.inner = inner
        self.buffer: list[tuple[int, Example]] = []
        self.seen = 0
        self.rng = random.Random(inner.seed)
        self.own_count = 0

    def attach(self, model: PreTrainedModel) -> PeftModel:
        return self.inner.attach(model)

    def before_task(self, model: PeftModel, index: int) -> None:
        self.inner.before_task(model, index)

    def train_examples(self, index: int, examples: list[Example]) -> list[Example]:
        own = self.inner.train_examples(index, examples)
        self.own_count = len(own)
        kept = [example for _, example in self.buffer]
        if not kept:
            return own
        if self.options.ratio is None:
            return own + kept
        wanted = round(len(own) * self.options.ratio / (1 - self.options.ratio))
        if wanted <= len(kept):
            return own + self.rng.sample(kept, wanted)
        return own + [self.rng.choice(kept) for _ in range(wanted)]

    def extra_loss(self, model: PeftModel, index: int):
        return self.inner.extra_loss(model, index)

    def after_task(self, model: PeftModel, index: int, examples: list[Example]) -> None:
        self.inner.after_task(model, index, examples)
        self.remember(index, examples[: self.own_count])

    def remember(self, index: int, examples: list[Example]) -> None:
        """Add task `index`'s examples to the buffer, as the selection rule says."""
        options = self.options
        if options.selection == "reservoir":
            for example in examples:
                self.seen += 1
                if len(self.buffer) < options.size:
                    self.buffer.append((index, example))
                else:
                    slot = self.rng.randrange(self.seen)
                    if slot < options.size:
                        self.buffer[slot] = (index, example)
            return
        count = options.per_task or max(1, round(options.fraction * len(examples)))
        chosen = self.rng.sample(examples, min(count, len(examples)))
        self.buffer += [(index, example) for example in chosen]

    def save_adapter(self, model: PeftModel, index: int, folder: Path) -> None:
        self.inner.save_adapter(model, index, folder)

    def state_dict(self) -> dict[str, Any]:
        """The buffer itself (examples as token ids), so a resumed run replays the same ones."""
        return {
            "inner": self.inner.state_dict(),
            "buffer": [[task, asdict(example)] for task, example in self.buffer],
            "seen": self.seen,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.buffer = [(task, Example(**fields)) for task, fields in state["buffer"]]
        self.seen = state["seen"]
        self.rng.setstate(state["rng"])

    def save_extras(self, model: PeftModel, index: int, root: Path) -> None:
        self.inner.save_extras(model, index, root)
        rows = [
            {"task": self.tasks[task], "row": ex.row, "prompt": ex.prompt, "target": ex.target}
            for task, ex in self.buffer
        ]
        runs.write_jsonl(root / "replay" / "buffer.jsonl", rows)
