"""Stop requests from a scheduler: SIGTERM and SIGUSR1, which clusters send before preemption,
ask the run to checkpoint at the next step boundary and stop; every process stops at the same
step, so the checkpoint is one consistent state."""

from __future__ import annotations

import signal
import threading
from typing import Any

from accelerate import Accelerator

from pecft_cli.parallel.distributed import reduce_sum
from pecft_cli.parallel.launch import record_stop

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While entered, the stop signals set a flag instead of killing the process."""

    def __init__(self) -> None:
        self.flag = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, number: int, frame: Any) -> None:
        self.flag = True
        record_stop()

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop (every process gets the same answer)."""
        return reduce_sum(accelerator, float(self.flag)) > 0
