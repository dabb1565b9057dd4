"""seq's snapshots as a library of task experts: a LoRA per task, each started from the one before.

Task k's LoRA begins as a copy of task k-1's finished LoRA and trains on task k alone, so it
carries what the earlier tasks taught (forward transfer, which `separate` gives up) while the
earlier LoRAs stay as they were. Unrouted, the model after task k is task k's LoRA alone, which
is `seq`'s model after task k (bit for bit with `lora.dropout` 0; dropout masks are keyed by the
adapter's name, so with dropout the two draw other masks). With a router
(`strategy.routing: gaussian` or `prototype`) each input is served by the snapshot taken right
after its own task, so nothing a later task overwrites is lost; what routing keeps is the
chain's diagonal, each task at its best.
"""

from __future__ import annotations

from pecft_cli.strategies.task_loras import Layout, composed

build = composed(Layout(alone=True, from_previous=True))
