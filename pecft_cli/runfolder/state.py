"""run.json: what a run is, how far it got and what it ran on."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pecft_cli import __version__
from pecft_cli.errors import PecftError
from pecft_cli.runfolder.atomic import read_json_file, write_json
from pecft_cli.runfolder.layout import FORMAT_VERSION, RunFolder

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "pecft-cli")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def peak_memory_mb() -> dict[str, float]:
    """This process's peak resident memory, and peak CUDA memory where a GPU was used."""
    import resource

    import torch

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS
    peak = {"cpu_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)}
    if torch.cuda.is_available():
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def cpu_name() -> str:
    """The CPU model: figures and bit-exact results depend on it, so each run records it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": str(os.cpu_count()),
    }
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Timings:
    """Where a run's wall time went, in seconds; stages keyed by name; `cpu_seconds` is the
    process's CPU time (all threads), which other work on the machine changes far less."""

    load_seconds: float | None = None
    train_seconds: dict[str, float] = field(default_factory=dict)
    eval_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float | None = None
    cpu_seconds: float | None = None


@dataclass
class RunState:
    """run.json: what a run is, how far it got and how it ended, typed.

    `status` is running, completed, failed, interrupted, preempted, diverged or process_died;
    `training` holds each trained stage's summary (steps, tokens, losses, seconds);
    `routing_accuracy`, with a router, the share of each row's inputs of trained tasks that it
    sent to their own task's LoRA, `routing_confusion` where each task's inputs went (true task
    -> routed-to task -> count) and `routing_estimate` the router's accuracy on held-out
    training prompts after each stage (from the second on); `stage_peak_memory_mb` the
    process's peak once each stage was trained, saved and scored (a training summary's peak is
    taken before the stage's own after-training work and its row).
    """

    name: str
    seed: int
    strategy: str
    tasks: list[str]
    status: str = "running"
    tasks_done: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: now())
    finished_at: str | None = None
    resumed_at: list[str] = field(default_factory=list)
    error: str | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    versions: dict[str, str] = field(default_factory=lambda: library_versions())
    timings: Timings = field(default_factory=Timings)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    processes: int | None = None
    sharding: str = "none"  # or "fsdp2": the base model split across the processes
    dtype: str | None = None
    peak_memory_mb: dict[str, float] | None = None
    stage_peak_memory_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    routing_accuracy: dict[str, float] = field(default_factory=dict)
    routing_confusion: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    routing_estimate: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    pecft_version: str = __version__

    @property
    def planned_stages(self) -> list[str]:
        """The stages in order: as the strategy planned them, else one per task."""
        return self.stages or self.tasks

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> RunState:
        """The state in a run.json, of any pecft that wrote format 1; unknown keys are dropped."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        try:
            values["timings"] = Timings(**values.get("timings", {}))
            return cls(**values)
        except TypeError as exc:
            raise PecftError(f"{path}: not a pecft run state file ({exc}).") from None


def read_state(folder: RunFolder) -> RunState | None:
    """run.json, or None when the folder has none."""
    data = read_json_file(folder.state)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise PecftError(f"{folder.state}: not a pecft run state file (expected a JSON object).")
    return RunState.from_json(data, folder.state)


def write_state(folder: RunFolder, state: RunState) -> None:
    write_json(folder.state, state.to_json())


def record_end(root: Path, status: str, error: str) -> None:
    """Mark a run that its own processes could not mark: one of them died and took the rest."""
    folder = RunFolder(root)
    state = read_state(folder)
    if state is not None and state.status != "completed":
        state.status, state.error, state.finished_at = status, error, now()
        write_state(folder, state)
