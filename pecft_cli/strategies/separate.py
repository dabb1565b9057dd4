"""A LoRA of its own for every task, trained from the base alone: a library of task experts.

Task k trains a fresh LoRA with none of the earlier ones active, so nothing it learns touches
them and nothing they learnt helps it. Without a router the model after task k is task k's LoRA
alone, which forgets every earlier task by construction; with `strategy.routing: prototype` each
input is served by the LoRA of the task it is routed to, so the matrix shows what routing keeps.
Served with an oracle task id, it is the per-task-LoRA ceiling of any routed method. Every
adapter is a plain PEFT LoRA (`adapters/<NN>-<task>/` is task NN's own; `task_loras/` holds the
same LoRAs, where routers that mix task LoRAs find them for every strategy).
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from pecft_cli.model.adapters import save_adapter
from pecft_cli.strategies import stacked
from pecft_cli.strategies.base import Stage
from pecft_cli.strategies.inclora import IncrementalLora


class Separate(IncrementalLora):
    """IncLoRA without the stack: each task's own LoRA, trained and served alone."""

    alone = True

    def serve(self, model: PeftModel, stage: Stage | None) -> None:
        """Task `stage`'s LoRA alone; None restores the latest stage's setup."""
        if stage is None:
            super().serve(model, None)
        else:
            model.base_model.set_adapter(stacked.task_adapter(stage.index))

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        save_adapter(model, folder, stacked.task_adapter(stage.index))
