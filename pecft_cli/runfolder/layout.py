"""The run folder's layout: the only place that spells a path inside a run folder
(a contract scripts rely on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
BASE = "base"  # the matrix row scored before any training


@dataclass(frozen=True)
class EvalFolder:
    """Paths of one evaluation's results: a run's eval/, or another `pecft eval --out` folder."""

    root: Path

    @property
    def matrix(self) -> Path:
        return self.root / "matrix.csv"

    @property
    def heatmap(self) -> Path:
        return self.root / "matrix.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def harness(self) -> Path:
        """evaluation.harness: each harness task's score, one row per stage."""
        return self.root / "harness.csv"

    @property
    def harness_heatmap(self) -> Path:
        return self.root / "harness.png"

    @property
    def extra(self) -> Path:
        """Scores of `pecft eval --data` sets, one row per stage."""
        return self.root / "extra.csv"

    @property
    def progress(self) -> Path:
        """Finished cells of an evaluation in progress: .progress/."""
        return self.root / ".progress"

    def predictions(self, stage: str, task: str) -> Path:
        return self.root / "predictions" / stage / f"{task}.jsonl"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder: the only place that spells a path inside it."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def eval(self) -> EvalFolder:
        return EvalFolder(self.root / "eval")

    def limited_eval(self, limit: int) -> EvalFolder:
        """Where `pecft eval --limit N` writes when N differs from the recipe's: eval-limitN/."""
        return EvalFolder(self.root / f"eval-limit{limit}")

    @property
    def matrix(self) -> Path:
        return self.eval.matrix

    @property
    def heatmap(self) -> Path:
        return self.eval.heatmap

    @property
    def metrics(self) -> Path:
        return self.eval.metrics

    @property
    def train_log(self) -> Path:
        return self.root / "logs" / "train.jsonl"

    def adapter(self, index: int, stage: str) -> Path:
        """The adapter of the model after stage `index` (0-based): adapters/01-<stage>."""
        return self.root / "adapters" / f"{index + 1:02d}-{stage}"

    @property
    def trackers(self) -> Path:
        """What experiment trackers write in the run folder: logs/trackers/."""
        return self.root / "logs" / "trackers"

    def card(self, index: int, stage: str) -> Path:
        """The model card of the adapter after stage `index`: its README.md for the Hub."""
        return self.adapter(index, stage) / "README.md"

    def task_lora(self, index: int, task: str) -> Path:
        """Task `index`'s own LoRA, for strategies that train one per task: task_loras/01-<task>."""
        return self.root / "task_loras" / f"{index + 1:02d}-{task}"

    def predictions(self, stage: str, task: str) -> Path:
        return self.eval.predictions(stage, task)

    @property
    def replay_buffer(self) -> Path:
        """The examples replay keeps, as they stand after the latest stage."""
        return self.root / "replay" / "buffer.jsonl"

    @property
    def router(self) -> Path:
        """The router (strategy.routing: gaussian or prototype) after the latest stage."""
        return self.root / "router"

    @property
    def checkpoint(self) -> Path:
        """Resumable training state, while a run is unfinished: checkpoint/."""
        return self.root / "checkpoint"

    @property
    def merges(self) -> Path:
        """Scores of merged results (`pecft merge-adapters --eval`), one row per merge."""
        return self.root / "eval" / "merges.csv"

    def merge_predictions(self, merge: str, task: str) -> Path:
        return self.root / "eval" / "merges" / merge / f"{task}.jsonl"
