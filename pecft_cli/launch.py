"""`pecft train --num-processes N`: start the same command as N processes through Accelerate.

On a host with GPUs each process gets its own; on a host without, the processes are real gloo
ranks on the CPU (ACCELERATE_USE_CPU=1), never N copies that each repeat the run. Stop signals
are passed on, and the command exits with the code the main process chose (0, 2, 75, 1).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pecft_cli.errors import PecftError

EXIT_FILE = "PECFT_EXIT_FILE"


def free_port() -> int:
    """A port no one listens on now, so two launches on one host do not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(processes: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that run `pecft argv` N times."""
    if processes < 1:
        raise PecftError(f"--num-processes {processes}: give a positive number of processes.")
    env = dict(os.environ)
    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    if gpus == 0 and processes > cores:
        raise PecftError(
            f"--num-processes {processes}: this host has no GPU and {cores} CPU cores; use at "
            f"most {cores} processes (one gloo rank per core)."
        )
    if gpus == 0:
        env["ACCELERATE_USE_CPU"] = "1"
    elif processes > gpus:
        raise PecftError(
            f"--num-processes {processes}: this host has {gpus} GPU(s); use at most {gpus} "
            "processes (one per GPU)."
        )
    forwarded = drop_option(argv, "--num-processes")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        "--module",
        "pecft_cli",
        *forwarded,
    ]
    return command, env


def drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` or `name=VALUE`."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            kept.append(item)
    return kept


def relaunch(processes: int, argv: list[str]) -> int:
    """Run the command as N processes and return the main process's exit code."""
    command, env = launch_command(processes, argv)
    with tempfile.TemporaryDirectory() as scratch:
        exit_file = Path(scratch) / "exit"
        env[EXIT_FILE] = str(exit_file)
        child = subprocess.Popen(command, env=env)

        def forward(number: int, frame: object) -> None:
            # The launcher passes SIGTERM on to every process; they checkpoint and stop.
            child.send_signal(signal.SIGTERM)

        previous = {n: signal.signal(n, forward) for n in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            code = child.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if exit_file.is_file():
            return int(exit_file.read_text() or code)
        return code if code in (0, 2) else 1


def record_exit(code: object) -> None:
    """Tell a relaunching parent the main process's exit code."""
    path = os.environ.get(EXIT_FILE)
    if path and os.environ.get("RANK", "0") == "0":
        value = code if isinstance(code, int) else (0 if code is None else 1)
        Path(path).write_text(str(value))
