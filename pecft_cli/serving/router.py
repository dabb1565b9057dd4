"""Routers: the task whose LoRA serves an input, chosen from the input alone (no task id).

Both kinds keep statistics of each trained task's features (`pecft_cli.serving.features`),
never its examples, and are written to the run folder after every stage (`router/`: a JSON
index and a safetensors file that stock tools read).

- `prototype`: a task's prototype is the normalised mean of its prompts' normalised features;
  an input goes to the nearest prototype by cosine. Its confidence is the margin between the
  two best cosines.
- `gaussian`: a Gaussian classifier with one shared covariance (linear discriminant analysis).
  Each task keeps its count, feature sum and scatter (sum of (x - mean)(x - mean)^T); the shared
  covariance is the pooled scatter over N - T degrees of freedom, shrunk toward its mean
  eigenvalue: (1 - s) C + s (trace(C) / d) I with s = `shrinkage`. An input goes to the task
  with the highest posterior under equal priors, which is its confidence. Where tasks share a
  template and differ only in their inputs, it tells them apart where the nearest mean does not:
  it weighs each direction by how much the tasks vary along it.

Statistics are sums, so several processes each add their share of a task's prompts and the sums
are added up (`Totals`); the router is then the one-process router to float tolerance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pecft_cli.errors import PecftError
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.serving.features import Features

INDEX_FILE = "router.json"
LEGACY_POOLING = {"last token": "last"}  # how routers of earlier versions named it
WEIGHTS_FILES = {"prototype": "prototypes.safetensors", "gaussian": "gaussian.safetensors"}


@dataclass
class Totals:
    """A task's feature statistics as sums, which processes add up: count, sum, and (for the
    Gaussian router) the sum of outer products."""

    count: float
    total: torch.Tensor
    squares: torch.Tensor | None = None

    @classmethod
    def of(cls, vectors: torch.Tensor, squares: bool) -> Totals:
        x = vectors.double()
        return cls(float(len(x)), x.sum(0), x.T @ x if squares else None)

    def minus(self, other: Totals) -> Totals:
        """These sums without `other`'s part of them."""
        squares = None
        if self.squares is not None and other.squares is not None:
            squares = self.squares - other.squares
        return Totals(self.count - other.count, self.total - other.total, squares)


@dataclass
class PrototypeRouter:
    """The prototypes of the tasks trained so far, in stage order."""

    features: Features = field(default_factory=Features)
    tasks: list[str] = field(default_factory=list)
    prototypes: list[torch.Tensor] = field(default_factory=list)
    kind: str = "prototype"

    def totals(self, vectors: torch.Tensor) -> Totals:
        return Totals.of(torch.nn.functional.normalize(vectors.float(), dim=-1), squares=False)

    def add(self, task: str, totals: Totals) -> None:
        """Task `task`'s prototype from the sum of its prompts' normalised features."""
        self.tasks.append(task)
        mean = (totals.total / totals.count).float()
        self.prototypes.append(torch.nn.functional.normalize(mean, dim=0))

    def upto(self, count: int) -> PrototypeRouter:
        """The router as it stood once its first `count` tasks had trained."""
        return PrototypeRouter(self.features, self.tasks[:count], self.prototypes[:count])

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """(inputs, tasks): each input's cosine with each prototype."""
        unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return unit @ torch.stack(self.prototypes).T

    def confidence(self, scores: torch.Tensor) -> torch.Tensor:
        """The margin between the best and the second-best cosine (1 with one task)."""
        if scores.shape[1] == 1:
            return torch.ones(scores.shape[0])
        top = scores.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"prototype.{i}": p.contiguous() for i, p in enumerate(self.prototypes)}

    def index(self) -> dict[str, Any]:
        return {}

    @classmethod
    def restore(cls, spec: Features, tasks: list[str], index: dict, weights: dict) -> Any:
        return cls(spec, tasks, [weights[f"prototype.{i}"] for i in range(len(tasks))])


@dataclass
class GaussianRouter:
    """Per-task counts, means and scatters, and the shrinkage of the shared covariance."""

    features: Features = field(default_factory=Features)
    shrinkage: float = 0.1
    tasks: list[str] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    means: list[torch.Tensor] = field(default_factory=list)  # float64
    scatters: list[torch.Tensor] = field(default_factory=list)  # float64, d x d
    kind: str = "gaussian"
    solved: tuple[torch.Tensor, torch.Tensor] | None = None  # cached weights and biases

    def totals(self, vectors: torch.Tensor) -> Totals:
        return Totals.of(vectors, squares=True)

    def add(self, task: str, totals: Totals) -> None:
        """Task `task`'s count, mean and scatter from the sums of its prompts' features."""
        assert totals.squares is not None
        mean = totals.total / totals.count
        self.tasks.append(task)
        self.counts.append(totals.count)
        self.means.append(mean)
        self.scatters.append(totals.squares - totals.count * torch.outer(mean, mean))
        self.solved = None

    def upto(self, count: int) -> GaussianRouter:
        return GaussianRouter(
            self.features,
            self.shrinkage,
            self.tasks[:count],
            self.counts[:count],
            self.means[:count],
            self.scatters[:count],
        )

    def covariance(self) -> torch.Tensor:
        """The pooled within-task covariance, shrunk toward its mean eigenvalue."""
        scatter = torch.stack(self.scatters).sum(0)
        freedom = sum(self.counts) - len(self.counts)
        pooled = scatter / max(freedom, 1.0)
        d = pooled.shape[0]
        trace = float(torch.trace(pooled))
        if trace <= 0:  # every task's features constant (one token, say): plain distances
            return torch.eye(d, dtype=torch.float64)
        ridge = trace / d
        return (1 - self.shrinkage) * pooled + self.shrinkage * ridge * torch.eye(d).double()

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """(inputs, tasks): the log-posterior of each task under equal priors."""
        if self.solved is None:
            means = torch.stack(self.means)  # tasks x d
            weights = torch.linalg.lstsq(self.covariance(), means.T).solution  # d x tasks
            biases = -0.5 * (means * weights.T).sum(1)
            self.solved = (weights, biases)
        weights, biases = self.solved
        logits = vectors.double() @ weights + biases
        return torch.log_softmax(logits, dim=1).float()

    def confidence(self, scores: torch.Tensor) -> torch.Tensor:
        """The posterior of the chosen task."""
        return scores.max(dim=1).values.exp()

    def weights(self) -> dict[str, torch.Tensor]:
        found = {}
        for i, (mean, scatter) in enumerate(zip(self.means, self.scatters, strict=True)):
            found[f"mean.{i}"] = mean.contiguous()
            found[f"scatter.{i}"] = scatter.contiguous()
        return found

    def index(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage, "counts": self.counts}

    @classmethod
    def restore(cls, spec: Features, tasks: list[str], index: dict, weights: dict) -> Any:
        means = [weights[f"mean.{i}"] for i in range(len(tasks))]
        scatters = [weights[f"scatter.{i}"] for i in range(len(tasks))]
        counts = [float(c) for c in index["counts"]]
        return cls(spec, float(index["shrinkage"]), tasks, counts, means, scatters)


Router = PrototypeRouter | GaussianRouter
KINDS: dict[str, type[PrototypeRouter] | type[GaussianRouter]] = {
    "prototype": PrototypeRouter,
    "gaussian": GaussianRouter,
}


def route(router: Router, vectors: torch.Tensor) -> tuple[list[int], list[float]]:
    """Each input's task (an index into `router.tasks`) and the router's confidence in it."""
    scores = router.scores(vectors)
    return scores.argmax(dim=1).tolist(), router.confidence(scores).tolist()


def save_router(router: Router, folder: Path) -> None:
    """The router's weights and its JSON index into `folder` (which exists)."""
    save_file(router.weights(), str(folder / WEIGHTS_FILES[router.kind]))
    spec = router.features
    index = {
        "kind": router.kind,
        "layer": spec.layer,
        "pooling": spec.pooling,
        "prefix": list(spec.prefix),
        "suffix": list(spec.suffix),
        "tasks": router.tasks,
        **router.index(),
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def load_router(folder: Path) -> Router:
    """The router a run saved; a clear error when it is missing or damaged."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        kind = index["kind"]
        weights = load_file(str(folder / WEIGHTS_FILES[kind]))
        pooling = LEGACY_POOLING.get(index.get("pooling"), index.get("pooling", "last"))
        affixes = (tuple(index.get("prefix", ())), tuple(index.get("suffix", ())))
        layer = index.get("layer", -1)
        spec = Features(None if layer is None else int(layer), str(pooling), *affixes)
        return KINDS[kind].restore(spec, list(index["tasks"]), index, weights)
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise PecftError(
            f"{folder}: the run's router does not load ({type(exc).__name__}: {exc}); "
            "train the run again, or evaluate it with strategy.routing removed."
        ) from None


def saved_router(saved: SavedRun) -> Router:
    """The router a routed run saved, checked against the stages whose adapters it has."""
    router = load_router(saved.folder.router)
    planned = saved.state.planned_stages
    trained = list(saved.adapters)
    if router.tasks != planned[: len(router.tasks)] or len(router.tasks) < len(trained):
        known = ", ".join(router.tasks) or "(none)"
        raise PecftError(
            f"{saved.folder.router}: the router knows the tasks {known} but the run has adapters "
            f"for {', '.join(trained)}; it does not belong to these adapters. Train the run "
            "again, or use it with strategy.routing removed."
        )
    return router
