"""`pecft train --num-processes N`: start the same command as N processes through Accelerate.

On a host with GPUs each process gets its own; on a host without, the processes are real gloo
ranks on the CPU (ACCELERATE_USE_CPU=1), never N copies that each repeat the run. Stop signals
are passed on, and the command exits with the code the main process chose (0, 2, 3, 75, 1). A
process that dies without choosing one (killed, out of memory) makes the others fail at their
next collective; the launcher then names the process that died, and its signal or exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from pecft_cli.errors import PecftError, RankDied

EXIT_DIR = "PECFT_EXIT_DIR"  # where each rank of a relaunch records how it ended
FSDP_FLAG = "ACCELERATE_USE_FSDP"  # what `accelerate launch` sets with an FSDP config
FSDP_VERSION = "FSDP_VERSION"


def free_port() -> int:
    """A port no one listens on now, so two launches on one host do not collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(
    processes: int, argv: list[str], fsdp: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that run `pecft argv` N times;
    with `fsdp`, the processes shard the base model (`pecft_cli.parallel.sharding`)."""
    if processes < 1:
        raise PecftError(f"--num-processes {processes}: give a positive number of processes.")
    import torch

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
    if fsdp:
        env.update({FSDP_FLAG: "true", FSDP_VERSION: "2"})
    forwarded = [item for item in drop_option(argv, "--num-processes") if item != "--fsdp"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
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


def relaunch(processes: int, argv: list[str], fsdp: bool = False) -> int:
    """Run the command as N processes and return the exit code the main process chose; raise
    RankDied when a process ended without choosing one (killed, out of memory)."""
    from accelerate.commands.launch import launch_command as accelerate_launch
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import patch_environment
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    command, env = launch_command(processes, argv, fsdp)
    arguments = launch_command_parser().parse_args(command[3:])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    added = {key: value for key, value in env.items() if os.environ.get(key) != value}
    with (
        tempfile.TemporaryDirectory() as scratch,
        patch_environment(**added, **{EXIT_DIR: scratch}),
    ):
        # The launcher's agent stops every process on SIGTERM; SIGUSR1 asks for the same.
        previous = signal.signal(signal.SIGUSR1, lambda n, f: os.kill(os.getpid(), signal.SIGTERM))
        failures: dict[int, Any] = {}
        try:
            accelerate_launch(arguments)
        except ChildFailedError as exc:
            failures = exc.failures
        except SignalException:
            pass
        except SystemExit as exc:
            # accelerate 1.16 and later turn the agent's stop signal into exit 128 + signal.
            if exc.code not in (128 + signal.SIGTERM, 128 + signal.SIGINT):
                raise
        finally:
            signal.signal(signal.SIGUSR1, previous)
        return outcome(Path(scratch), failures, processes)


def outcome(scratch: Path, failures: dict[int, Any], processes: int) -> int:
    """The main process's exit code when it recorded one that says what happened; otherwise the
    process that died first, or the traceback of the one that failed."""
    codes = {rank: int(path.read_text() or 1) for rank, path in records(scratch, "exit")}
    if codes.get(0, 1) != 1:
        return codes[0]
    if not failures:
        return codes.get(0, 0)
    silent = sorted(rank for rank in failures if rank not in codes)
    if silent:
        rank, exitcode = first_death(scratch, failures, silent)
        raise RankDied(rank, exitcode, processes)
    tracebacks = dict(records(scratch, "traceback"))
    first = tracebacks.get(0) or next(iter(tracebacks.values()), None)
    if first is not None:
        sys.stderr.write(first.read_text())
    return 1


def first_death(scratch: Path, failures: dict[int, Any], silent: list[int]) -> tuple[int, int]:
    """The rank (and its exit code) that died first among those that left no exit record. The
    launcher's agent stops the others with SIGTERM, so a rank that recorded the stop request or
    ended by SIGTERM was stopped, unless every one was."""
    stopped = {rank for rank, _ in records(scratch, "stopped")}
    unasked = [r for r in silent if r not in stopped]
    killed = [r for r in unasked if failures[r].exitcode != -signal.SIGTERM]
    rank = (killed or unasked or silent)[0]
    return rank, failures[rank].exitcode


def records(scratch: Path, kind: str) -> list[tuple[int, Path]]:
    """The per-process files of one kind the ranks left in the scratch folder."""
    return sorted((int(path.stem.removeprefix("rank")), path) for path in scratch.glob(f"*.{kind}"))


def launched_rank() -> int:
    """The rank this process was started as (0 when it was started alone), known before any
    process group is formed."""
    return int(os.environ.get("RANK", "0"))


def under_relaunch() -> Path | None:
    """The scratch folder of the relaunching parent, when this process is one of its ranks."""
    folder = os.environ.get(EXIT_DIR)
    return Path(folder) if folder else None


def record_exit(code: object) -> None:
    """Tell a relaunching parent the exit code this process chose."""
    folder = under_relaunch()
    if folder is not None:
        value = code if isinstance(code, int) else (0 if code is None else 1)
        (folder / f"rank{launched_rank()}.exit").write_text(str(value))


def record_stop() -> None:
    """Tell a relaunching parent this process was asked to stop: when one process dies, the
    launcher's agent stops the others, which may then end without an exit code of their own."""
    folder = under_relaunch()
    if folder is not None:
        (folder / f"rank{launched_rank()}.stopped").touch()


def record_failure() -> bool:
    """Hand an unexpected exception's traceback to the relaunching parent instead of printing
    it: when one process dies, the others fail in their next collective, and only the parent
    knows which failure came first. Returns whether there is such a parent."""
    folder = under_relaunch()
    if folder is None:
        return False
    rank = launched_rank()
    (folder / f"rank{rank}.traceback").write_text(f"[rank{rank}] {traceback.format_exc()}")
    record_exit(1)
    return True
