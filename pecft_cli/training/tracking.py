"""Experiment trackers through Accelerate's integrations: `logging.report_to` in the recipe.

A tracker listens to the run's progress events. Every optimizer step logs `train/loss`,
`train/lr` and `train/tokens_per_s`, every scored cell `matrix/<task>` at the global step its
row was scored after (0 for the base row), and the end of the run `metrics/<name>` and the
heatmap. Global steps count optimizer steps over the whole stream, so a resumed run continues the
same curves (TensorBoard writes into the same folder; a W&B run is resumed by the id kept in the
run folder). Only the main process logs. Nothing secret goes to the run folder: trackers read
their credentials from their own environment (for W&B without network, `WANDB_MODE=offline`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

from pecft_cli.errors import PecftError
from pecft_cli.events import EventCallback
from pecft_cli.recipe.schema import Recipe
from pecft_cli.runfolder.atomic import write_json
from pecft_cli.runfolder.layout import BASE, RunFolder

PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet-ml", "dvclive": "dvclive"}


def check_trackers(recipe: Recipe, root: Path) -> None:
    """Refuse a tracker whose package is missing, or a run folder trackers cannot write to,
    before anything is loaded."""
    from accelerate import utils

    for name in recipe.logging.report_to:
        if not getattr(utils, f"is_{name}_available")():
            package = PACKAGES.get(name, name)
            raise PecftError(
                f"logging.report_to: '{name}' needs the {package} package, which is not "
                f"installed; pip install {package}, or drop '{name}' from report_to."
            )
    writable = next((p for p in [root, *root.parents] if p.exists()), root)
    if recipe.logging.report_to and not os.access(writable, os.W_OK):
        raise PecftError(
            f"logging.report_to: the trackers write under {root}, and {writable} is read-only; "
            "give a writable output_dir, or drop report_to."
        )


class Tracking:
    """The run's trackers and the step count they log against."""

    def __init__(self, accelerator: Accelerator, recipe: Recipe, folder: RunFolder) -> None:
        self.trackers: list[GeneralTracker] = []
        self.offsets: dict[str, int] = {BASE: 0}  # stage -> global step its row is at
        self.offset = 0
        if not accelerator.is_main_process:
            return
        for name in recipe.logging.report_to:
            self.trackers.append(start(name, recipe, folder))

    def listen(self, on_event: EventCallback) -> EventCallback:
        """`on_event`, with every event also logged to the trackers."""
        if not self.trackers:
            return on_event

        def both(kind: str, fields: dict[str, Any]) -> None:
            self.record(kind, fields)
            on_event(kind, fields)

        return both

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "task_start":
            self.offset = fields["first_step"]
            self.offsets[fields["task"]] = self.offset + fields["steps"]
        elif kind == "step":
            values = {f"train/{key}": fields[key] for key in ("loss", "lr", "tokens_per_s")}
            self.log(values, self.offset + fields["step"])
        elif kind == "eval" and fields["score"] is not None:
            step = self.offsets.get(fields["stage"], self.offset)
            self.log({f"matrix/{fields['task']}": fields["score"]}, step)

    def log(self, values: dict[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def finish(self, metrics: dict[str, Any], heatmap: Path) -> None:
        """The run's metrics and heatmap, at the last step; then close every tracker."""
        if not self.trackers:
            return
        numbers = {f"metrics/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
        self.log(numbers, self.offset_end())
        image = heatmap_array(heatmap)
        for tracker in self.trackers:
            if image is None or not hasattr(tracker, "log_images"):
                continue
            if tracker.name == "tensorboard":  # a batch of one HWC image
                tracker.log_images({"matrix": image[None]}, self.offset_end(), dataformats="NHWC")
            else:
                tracker.log_images({"matrix": [image]}, step=self.offset_end())
        self.close()

    def offset_end(self) -> int:
        return max(self.offsets.values())

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def start(name: str, recipe: Recipe, folder: RunFolder) -> GeneralTracker:
    """One started tracker, logging under the run folder (a W&B run resumed by its id)."""
    kind = LOGGER_TYPE_TO_CLASS[name]
    options: dict[str, Any] = {}
    if name == "wandb":
        options = {"id": wandb_id(folder), "resume": "allow", "dir": str(folder.trackers)}
    folder.trackers.mkdir(parents=True, exist_ok=True)
    if kind.requires_logging_directory:
        tracker = kind(recipe.name, str(folder.trackers), **options)
    else:
        tracker = kind(recipe.name, **options)
    tracker.start()
    tracker.store_init_configuration(run_config(recipe))
    return tracker


def wandb_id(folder: RunFolder) -> str:
    """The W&B run id of this pecft run: kept in the run folder, so a resume continues it."""
    path = folder.trackers / "wandb_id.json"
    if path.is_file():
        return json.loads(path.read_text())["id"]
    run_id = uuid.uuid4().hex[:12]
    write_json(path, {"id": run_id})
    return run_id


def run_config(recipe: Recipe) -> dict[str, Any]:
    """The settings a tracker shows beside the curves: flat, plain values."""
    return {
        "strategy": recipe.strategy.name,
        "routing": recipe.strategy.routing,
        "model": recipe.model.path,
        "seed": recipe.seed,
        "lora_r": recipe.lora.r,
        "lora_alpha": recipe.lora.alpha,
        "lr": recipe.training.lr,
        "epochs": recipe.training.epochs,
        "batch_size": recipe.training.batch_size,
        "tasks": ",".join(task.name for task in recipe.tasks),
    }


def heatmap_array(path: Path) -> Any:
    """The heatmap PNG as an RGB array, or None when it was not drawn."""
    if not path.is_file():
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
