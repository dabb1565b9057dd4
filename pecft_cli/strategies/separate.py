"""A LoRA of its own for every task, trained from the base alone: a library of task experts.

Task k trains a fresh LoRA with none of the earlier ones active, so nothing it learns touches
them and nothing they learnt helps it. Without a router the model after task k is task k's LoRA
alone, which forgets every earlier task by construction; with a router (`strategy.routing:
gaussian` or `prototype`) each input is served by the LoRA of the task it is routed to, so the
matrix shows what routing keeps. Served with an oracle task id, it is the per-task-LoRA ceiling
of any routed method. Every
adapter is a plain PEFT LoRA (`adapters/<NN>-<task>/` is task NN's own; `task_loras/` holds the
same LoRAs, where routers that mix task LoRAs find them for every strategy).
"""

from __future__ import annotations

from pecft_cli.strategies.task_loras import Layout, composed

build = composed(Layout(alone=True))
