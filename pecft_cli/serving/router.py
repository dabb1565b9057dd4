"""Routing each input to the LoRA of its own task, chosen from the input alone (no task id).

A prototype router. A task's prototype is the mean, over its training prompts, of the base
model's last hidden state at each prompt's last token, normalised; an input goes to the trained
task whose prototype is nearest by cosine. The last token sees the whole prompt, and where tasks
share a template but ask different things it is where they differ: on the quickstart's tasks it
routes every eval input right, where the mean over the prompt's tokens routes 89%. The base
model computes every embedding (adapters off), so a prototype never changes once its task has
trained, and an input's route does not depend on which adapter serves it. The router is saved
in the run folder after every stage (`router/`) and read back by `pecft eval`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from pecft_cli.errors import PecftError
from pecft_cli.parallel.sharding import no_grad
from pecft_cli.runfolder.saved import SavedRun

PROTOTYPE_EXAMPLES = 256  # training prompts a prototype is the mean of, at most
EMBED_BATCH = 32
WEIGHTS_FILE = "prototypes.safetensors"
INDEX_FILE = "router.json"


def embed(model: torch.nn.Module, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Each prompt's base-model embedding: the last hidden state at its last token, normalised
    to length one; one row per prompt, in order."""
    device = next(model.parameters()).device
    off = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with off, no_grad(model):
            for start in range(0, len(order), EMBED_BATCH):
                chunk = order[start : start + EMBED_BATCH]
                width = max(len(prompts[i]) for i in chunk)
                ids = [prompts[i] + [pad_id] * (width - len(prompts[i])) for i in chunk]
                mask = [[1] * len(prompts[i]) + [0] * (width - len(prompts[i])) for i in chunk]
                mask_t = torch.tensor(mask, device=device)
                output = model(
                    input_ids=torch.tensor(ids, device=device),
                    attention_mask=mask_t,
                    output_hidden_states=True,
                    use_cache=False,
                    logits_to_keep=1,
                )
                hidden = output.hidden_states[-1].float()
                last = mask_t.sum(1) - 1  # right-padded: each prompt's own last token
                pooled = hidden[torch.arange(len(chunk), device=device), last]
                vectors = torch.nn.functional.normalize(pooled, dim=-1)
                for i, vector in zip(chunk, vectors, strict=True):
                    rows[i] = vector.cpu()
    finally:
        model.train(was_training)
    return torch.stack([rows[i] for i in range(len(prompts))])


@dataclass
class Router:
    """The prototypes of the tasks trained so far, in stage order."""

    tasks: list[str] = field(default_factory=list)
    prototypes: list[torch.Tensor] = field(default_factory=list)

    def add(self, task: str, vectors: torch.Tensor) -> None:
        """Task `task`'s prototype from its training prompts' embeddings."""
        self.tasks.append(task)
        self.prototypes.append(torch.nn.functional.normalize(vectors.mean(0), dim=0))

    def upto(self, count: int) -> Router:
        """The router as it stood once its first `count` tasks had trained."""
        return Router(self.tasks[:count], self.prototypes[:count])

    def route(self, vectors: torch.Tensor) -> list[int]:
        """The index (in `tasks`) of each embedding's nearest prototype."""
        similarity = vectors @ torch.stack(self.prototypes).T
        return similarity.argmax(dim=1).tolist()

    def save(self, folder: Path) -> None:
        """prototypes.safetensors and router.json into `folder` (which exists)."""
        weights = {f"prototype.{i}": p.contiguous() for i, p in enumerate(self.prototypes)}
        save_file(weights, str(folder / WEIGHTS_FILE))
        index = {"kind": "prototype", "pooling": "last token", "tasks": self.tasks}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Router:
        """The router a run saved; a clear error when it is missing or damaged."""
        try:
            index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            weights = load_file(str(folder / WEIGHTS_FILE))
            tasks = list(index["tasks"])
            prototypes = [weights[f"prototype.{i}"] for i in range(len(tasks))]
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise PecftError(
                f"{folder}: the run's router does not load ({type(exc).__name__}: {exc}); "
                "train the run again, or evaluate it with strategy.routing removed."
            ) from None
        return cls(tasks, prototypes)


def saved_router(saved: SavedRun) -> Router:
    """The router a routed run saved, checked against the stages whose adapters it has."""
    router = Router.load(saved.folder.router)
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
