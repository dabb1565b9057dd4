"""Experience replay: keep some examples of every finished task and mix them into later stages.

Any strategy takes a replay buffer: `strategy.replay` adds one to every strategy but replay and
joint, and `strategy.name: replay` is seq with one. The task loop asks the buffer for a stage's
mix before it trains and hands it the stage's own examples after.

- Which examples: `per_task` examples or a `fraction` of each task (balanced over tasks), or a
  reservoir of `size` examples over the whole stream (tasks in proportion to their size).
- How many in a stage's training: all of the buffer, or, with `ratio`, as many as make that
  share of the mixed examples (drawn with replacement when the buffer is smaller).
The selection is seeded; the buffer is written to the run folder after every stage.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

from pecft_cli.data.tasks import Example
from pecft_cli.recipe.strategies import ReplayOptions
from pecft_cli.runfolder.atomic import write_jsonl
from pecft_cli.runfolder.layout import RunFolder


class ReplayBuffer:
    """The kept examples, each with the index of the stage it came from, and a seeded draw."""

    def __init__(self, options: ReplayOptions, seed: int) -> None:
        self.options = options
        self.kept: list[tuple[int, Example]] = []
        self.seen = 0
        self.rng = random.Random(seed)

    def mix(self, own: list[Example]) -> list[Example]:
        """A stage's own examples followed by the replayed ones."""
        kept = [example for _, example in self.kept]
        if not kept:
            return own
        if self.options.ratio is None:
            return own + kept
        wanted = round(len(own) * self.options.ratio / (1 - self.options.ratio))
        if wanted <= len(kept):
            return own + self.rng.sample(kept, wanted)
        return own + [self.rng.choice(kept) for _ in range(wanted)]

    def remember(self, index: int, own: list[Example]) -> None:
        """Add stage `index`'s own examples to the buffer, as the selection rule says."""
        options = self.options
        if options.selection == "reservoir":
            for example in own:
                self.seen += 1
                if len(self.kept) < options.size:
                    self.kept.append((index, example))
                else:
                    slot = self.rng.randrange(self.seen)
                    if slot < options.size:
                        self.kept[slot] = (index, example)
            return
        count = options.per_task or max(1, round(options.fraction * len(own)))
        chosen = self.rng.sample(own, min(count, len(own)))
        self.kept += [(index, example) for example in chosen]

    def save(self, run: RunFolder, stages: list[str]) -> None:
        """The kept examples as readable rows, with the stage each came from."""
        rows = [
            {"task": stages[index], "row": ex.row, "prompt": ex.prompt, "target": ex.target}
            for index, ex in self.kept
        ]
        write_jsonl(run.replay_buffer, rows)

    def state_dict(self) -> dict[str, Any]:
        """The buffer itself (examples as token ids), so a resumed run replays the same ones."""
        return {
            "buffer": [[index, asdict(example)] for index, example in self.kept],
            "seen": self.seen,
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = [(index, Example(**fields)) for index, fields in state["buffer"]]
        self.seen = state["seen"]
        self.rng.setstate(state["rng"])
