"""Progress reports: the library never prints; it calls `on_event(kind, fields)` instead.

Kinds: `status` (message), `warning` (message: something the user should act on),
`task_start` (index, total, task, steps, examples), `step` (task,
task_index, step, steps, loss, lr, tokens_per_s), `task_end` (task, index, seconds, first_loss,
last_loss, ...), `eval` (stage, task, metric, score, seconds). The command line renders them;
a library caller passes its own callback or none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EventCallback = Callable[[str, dict[str, Any]], None]


def ignore(kind: str, fields: dict[str, Any]) -> None:
    """The default progress callback: report nothing."""
