"""The model of one stage and the per-task adapters a router chooses between.

Two kinds hold the same three answers (the model; make task t's adapter answer; go back to the
stage as it stands): `LiveExperts`, the model a run is training, whose strategy knows how each
earlier stage answered, and `SavedExperts`, adapters a finished run saved, loaded with stock
PEFT under one name per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peft import PeftModel

from pecft_cli.model.artifacts import adapter_error, applied
from pecft_cli.runfolder.layout import BASE
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.strategies.base import Stage, Strategy


class Experts(Protocol):
    """What a routing mode needs of a stage's model."""

    model: Any

    def use(self, task: str) -> None:
        """Make the adapter of `task` (trained by this stage) answer."""

    def mixed(self) -> list[str]:
        """The PEFT adapter names of the task LoRAs trained by this stage, for Arrow."""

    def restore(self) -> None:
        """Answer as the stage stands again."""


@dataclass
class LiveExperts:
    """The model in training at `stage`: the strategy switches between its stages' adapters."""

    model: Any
    strategy: Strategy
    stages: list[Stage]
    stage: Stage
    names: list[str]  # the recipe's task names, by index

    def use(self, task: str) -> None:
        (own,) = [s for s in self.stages if task in (self.names[i] for i in s.tasks)]
        self.strategy.serve(self.model, own)

    def mixed(self) -> list[str]:
        return self.strategy.experts(self.stage)

    def restore(self) -> None:
        self.strategy.serve(self.model, None)


@dataclass
class SavedExperts:
    """A saved run's adapters on the base model, one PEFT adapter per stage (`served`)."""

    model: Any
    stages: list[str] = field(default_factory=list)

    def use(self, task: str) -> None:
        self.model.set_adapter(served(self.stages.index(task)))

    def mixed(self) -> list[str]:
        return [served(i) for i in range(len(self.stages))]

    def restore(self) -> None:
        """Nothing to restore: a saved stage is only ever served as a router picks."""


def served(index: int) -> str:
    """The PEFT adapter name of the stage at `index` in a routed model."""
    return f"stage{index + 1:02d}"


def bare(model: Any) -> Any:
    """The base model without any adapter that an earlier stage left on it."""
    return model.unload() if isinstance(model, PeftModel) else model


def load_named(model: Any, folders: list[Path]) -> PeftModel:
    """The base with each adapter folder loaded under its own name (`served`, in order)."""
    where = folders[0].parent
    try:
        loaded = PeftModel.from_pretrained(bare(model), folders[0], adapter_name=served(0))
        for index, folder in enumerate(folders[1:], start=1):
            loaded.load_adapter(folder, adapter_name=served(index))
    except Exception as exc:
        raise adapter_error(where, exc) from None
    return loaded


def stages_upto(saved: SavedRun, stage: str) -> list[str]:
    planned = saved.state.planned_stages
    return planned[: planned.index(stage) + 1]


def stage_adapters(model: Any, saved: SavedRun, stage: str) -> SavedExperts:
    """The base with the adapter of every stage up to `stage`, each under its own name, for a
    router to choose between input by input."""
    names = stages_upto(saved, stage)
    folders = [saved.adapters[name] for name in names]
    return SavedExperts(load_named(model, folders), names)


def task_loras(model: Any, saved: SavedRun, stage: str) -> SavedExperts:
    """The base with each task's own LoRA up to `stage` (task_loras/), for Arrow to mix."""
    names = stages_upto(saved, stage)
    folders = [saved.folder.task_lora(i, name) for i, name in enumerate(names)]
    return SavedExperts(load_named(model, folders), names)


def stage_alone(model: Any, saved: SavedRun, stage: str) -> SavedExperts:
    """The bare base at the base row, else the base with that stage's adapter alone."""
    if stage == BASE:
        return SavedExperts(bare(model))
    return SavedExperts(applied(bare(model), saved.adapters[stage]))
