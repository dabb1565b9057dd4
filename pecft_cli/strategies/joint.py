"""Joint (multi-task) training: one LoRA on every task's data at once, the usual upper bound.

Not continual at all: it is the ceiling the continual strategies are measured against. The run
has one stage, `joint`, and its matrix one row after the base row.
"""

from pecft_cli.strategies.base import Stage, Strategy

STAGE = "joint"


class Joint(Strategy):
    """One stage that trains on the union of all tasks, shuffled together."""

    def stages(self) -> list[Stage]:
        return [Stage(0, STAGE, tuple(range(len(self.tasks))))]
