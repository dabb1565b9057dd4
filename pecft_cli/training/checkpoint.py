"""What a stopped run needs to continue exactly where it was: `<run>/checkpoint/`.

A checkpoint holds every LoRA weight, the strategy's memory of earlier tasks, the optimizer and
scheduler of the stage in progress, the position in that stage (optimizer steps done; the data
order is fixed by the seed, so the loader replays it and skips what was trained) and the random
generators of every process. It is written as a folder under a temporary name and renamed into
place, so a crash mid-write leaves the previous checkpoint, never a torn one; it loads with
`torch.load(weights_only=True)`, which runs no code from the file.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pecft_cli.errors import PecftError, first_line
from pecft_cli.model.adapters import is_adapter_weight
from pecft_cli.parallel.distributed import gather
from pecft_cli.runfolder.atomic import write_folder, write_json, write_text
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.state import now

STATE_FILE = "state.pt"
SUMMARY_FILE = "checkpoint.json"


@dataclass(kw_only=True)
class Checkpoint:
    """Training state at a step boundary of stage `stage_index` (`step` optimizer steps done;
    0 at a stage boundary, where the stage has not started). `strategy` and `replay` hold the
    strategy's and the replay buffer's memory as it was when the stage started; `rng` every
    process's random generators, which `write_checkpoint` adds."""

    stage_index: int
    step: int
    lora: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    replay: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def mid_stage(self) -> bool:
        return self.step > 0


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter weight of the model (trainable or frozen), copied to the CPU."""
    return {
        name: parameter.detach().to("cpu", copy=True)
        for name, parameter in model.named_parameters()
        if is_adapter_weight(name)
    }


def load_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy saved LoRA weights into a model that has the same adapters."""
    parameters = dict(model.named_parameters())
    missing = [name for name in state if name not in parameters]
    if missing:
        raise PecftError(
            f"{where}: the checkpoint holds LoRA weights this run's model lacks ({missing[0]}); "
            "it was written by a different recipe. Start over with --overwrite."
        )
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value)


def rng_state() -> dict[str, Any]:
    """This process's random generators (those training draws from: dropout, data order)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(
    accelerator: Accelerator, folder: RunFolder, checkpoint: Checkpoint, stage: str | None
) -> None:
    """Add every process's random generators, then let the main process publish."""
    whole = replace(checkpoint, rng=gather(accelerator, rng_state()))
    if accelerator.is_main_process:
        save_checkpoint(folder, whole, stage)
    accelerator.wait_for_everyone()


def save_checkpoint(folder: RunFolder, checkpoint: Checkpoint, stage: str | None) -> None:
    """Publish the checkpoint in one rename, with a readable summary beside the state; `stage`
    names the stage it resumes (None when every stage has trained)."""

    def fill(scratch: Path) -> None:
        torch.save(asdict(checkpoint), scratch / STATE_FILE)
        summary = {
            "stage_index": checkpoint.stage_index,
            "stage": stage,
            "step": checkpoint.step,
            "processes": len(checkpoint.rng),
            "written_at": now(),
        }
        write_json(scratch / SUMMARY_FILE, summary)

    write_folder(folder.checkpoint, fill)


def load_checkpoint(folder: RunFolder) -> Checkpoint | None:
    """The run's checkpoint, or None when it has none."""
    path = folder.checkpoint / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return Checkpoint(**state)
    except Exception as exc:
        raise PecftError(
            f"{path}: the checkpoint does not load ({type(exc).__name__}: {first_line(exc)}); "
            "the run cannot resume from it. Start over with --overwrite."
        ) from None


def trim_log(folder: RunFolder, checkpoint: Checkpoint) -> None:
    """Drop log lines of steps past the checkpoint: they are trained again after resuming."""
    if not folder.train_log.is_file():
        return
    kept = []
    for line in folder.train_log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        position = (entry["task_index"], entry["step"])
        if position <= (checkpoint.stage_index, checkpoint.step):
            kept.append(line + "\n")
    write_text(folder.train_log, "".join(kept))
