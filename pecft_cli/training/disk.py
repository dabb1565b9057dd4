"""The run folder's size, estimated before training and checked against its disk's free space,
and `output.stage_adapters: last`, which keeps only the latest stage's adapter.

Every stage writes an adapter: a rank r LoRA for most strategies, the stack of the k task LoRAs
so far (rank r*k) for stacked ones, the full-rank change for OSF. Strategies with a LoRA per task
also keep each one in task_loras/, and the checkpoint holds the live LoRAs and AdamW's two moments
while a run is unfinished. Each part is a float32 tensor per weight (what PEFT saves), so the sum
is a lower bound: predictions, logs and model cards come on top. A run whose bound exceeds the
free space of the disk that will hold it is refused before anything is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pecft_cli.errors import PecftError
from pecft_cli.recipe.schema import Recipe, output_dir
from pecft_cli.recipe.strategies import TRAITS
from pecft_cli.runfolder.layout import RunFolder

FLOAT_BYTES = 4


def size(count: int) -> str:
    """Bytes in the unit a person reads at a glance."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


@dataclass
class DiskEstimate:
    """A lower bound of the run folder's size at its largest, in bytes, and the free space."""

    adapters: int
    task_loras: int
    checkpoint: int
    free: int
    disk: Path  # the folder whose file system was measured
    written: int = 0  # bytes the run folder holds already (a run to resume)

    @property
    def total(self) -> int:
        return self.adapters + self.task_loras + self.checkpoint

    def describe(self) -> str:
        parts = {"adapters": self.adapters, "task LoRAs": self.task_loras}
        parts["checkpoint while training"] = self.checkpoint
        shown = ", ".join(f"{name} {size(count)}" for name, count in parts.items() if count)
        return (
            f"at least {size(self.total)} for the run folder ({shown}) of {size(self.free)} "
            f"free on {self.disk}"
        )


def stage_sizes(recipe: Recipe, layers: dict[str, Any]) -> tuple[list[int], int]:
    """The bytes of each stage's adapter, and of one task's LoRA."""
    kind = TRAITS[recipe.strategy.name]
    shapes = [(m.in_features, m.out_features) for m in layers.values()]
    lora = recipe.lora.r * sum(i + o for i, o in shapes) * FLOAT_BYTES
    full = sum(min(i, o) * (i + o) for i, o in shapes) * FLOAT_BYTES
    stages = 1 if kind.one_stage else len(recipe.tasks)
    each = {"lora": [lora] * stages, "full": [full] * stages}
    each["stack"] = [lora * k for k in range(1, stages + 1)]
    return each[kind.stage_adapter], lora


def estimate_disk(recipe: Recipe, layers: dict[str, Any]) -> DiskEstimate:
    """What the run folder will hold at its largest, and the free space where it goes."""
    kind = TRAITS[recipe.strategy.name]
    stages, lora = stage_sizes(recipe, layers)
    last = recipe.output.stage_adapters == "last"
    adapters = sum(stages[-2:]) if last else sum(stages)  # the last two exist for a moment
    held = len(recipe.tasks) if kind.routes else 1
    trainable = stages[0] if kind.stage_adapter == "full" else lora
    root = output_dir(recipe)
    disk = root
    while not disk.is_dir():
        disk = disk.parent
    written = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    return DiskEstimate(
        adapters=adapters,
        task_loras=lora * len(recipe.tasks) if kind.routes else 0,
        checkpoint=held * lora + 2 * trainable,
        free=shutil.disk_usage(disk).free,
        disk=disk,
        written=written,
    )


def check_disk(recipe: Recipe, layers: dict[str, Any]) -> DiskEstimate:
    """The estimate; a run it shows cannot fit on its disk is refused."""
    estimate = estimate_disk(recipe, layers)
    if estimate.total - estimate.written <= estimate.free:
        return estimate
    stacked = TRAITS[recipe.strategy.name].stage_adapter == "stack"
    option = (
        ", or keep only the last stage's adapter (output.stage_adapters: last)"
        if stacked and recipe.output.stage_adapters == "all"
        else ""
    )
    raise PecftError(
        f"output_dir: this run cannot fit on its disk: it needs {estimate.describe()}. Free "
        f"space there or choose another output_dir{option}."
    )


def keep_stage_adapters(folder: RunFolder, stages: list[str], latest: int, keep: str) -> None:
    """With `output.stage_adapters: last`, remove every stage's adapter before `latest`, which
    is on disk whole by then; a kill between the two leaves an extra one, removed next time."""
    if keep != "last":
        return
    for index, name in enumerate(stages[:latest]):
        shutil.rmtree(folder.adapter(index, name), ignore_errors=True)
