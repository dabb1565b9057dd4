"""What every step of a training run needs, built once and handed down as one object."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate import Accelerator
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pecft_cli.data.replay import ReplayBuffer
from pecft_cli.data.tasks import TaskData
from pecft_cli.events import EventCallback
from pecft_cli.parallel.preemption import StopSignals
from pecft_cli.recipe.schema import Recipe
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.state import RunState, write_state
from pecft_cli.scoring.harness import HarnessTasks
from pecft_cli.serving.answering import OwnAdapter, Routing
from pecft_cli.strategies.base import Strategy
from pecft_cli.training.tracking import Tracking


@dataclass
class RunContext:
    """The run's parts: its process group (sharded or not), recipe, data, strategy (with its
    replay buffer, if any), how each stage answers (its routing mode) and folder, the state
    written to run.json, and (once set up) the model."""

    accelerator: Accelerator
    recipe: Recipe
    tokenizer: PreTrainedTokenizerBase
    tasks: list[TaskData]
    strategy: Strategy
    replay: ReplayBuffer | None
    folder: RunFolder
    state: RunState
    stop: StopSignals
    on_event: EventCallback
    trust_remote_code: bool = False
    routing: Routing = field(default_factory=OwnAdapter)  # how each stage answers
    sharded: bool = False  # the base model split across the processes (FSDP2)
    tracking: Tracking | None = None  # the experiment trackers of logging.report_to
    harness: HarnessTasks | None = None  # evaluation.harness, checked
    model: PeftModel = field(default=None)  # type: ignore[assignment]  # set by setup

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder (the only one, or rank 0)."""
        return self.accelerator.is_main_process

    @property
    def names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def save_state(self) -> None:
        """Write run.json as the run stands (main process only)."""
        if self.main:
            write_state(self.folder, self.state)
