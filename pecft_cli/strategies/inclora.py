"""IncLoRA: a new LoRA per task, the earlier ones frozen but still active; no extra loss.

The model after task k is the sum of LoRAs 1..k (exported as one plain LoRA); with a router, the
stack after task j is the model after task j, whatever came later.
"""

from __future__ import annotations

from pecft_cli.strategies.task_loras import Layout, composed

STACKED = Layout()

build = composed(STACKED)
