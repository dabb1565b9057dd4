"""The run folder: its layout (a contract scripts rely on), its state file, and safe writes.

Every file is written to a temporary name in the same folder and renamed into place, so a run
killed at any moment leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pecft_cli import __version__
from pecft_cli.errors import PecftError, did_you_mean, short

FORMAT_VERSION = 1
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "pecft-cli")


BASE = "base"  # the matrix row scored before any training


@dataclass(frozen=True)
class EvalFolder:
    """Paths of one evaluation's results: a run's eval/, or another `pecft eval --out` folder."""

    root: Path

    @property
    def matrix(self) -> Path:
        return self.root / "matrix.csv"

    @property
    def heatmap(self) -> Path:
        return self.root / "matrix.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def harness(self) -> Path:
        """evaluation.harness: each harness task's score, one row per stage."""
        return self.root / "harness.csv"

    @property
    def harness_heatmap(self) -> Path:
        return self.root / "harness.png"

    @property
    def extra(self) -> Path:
        """Scores of `pecft eval --data` sets, one row per stage."""
        return self.root / "extra.csv"

    @property
    def progress(self) -> Path:
        """Finished cells of an evaluation in progress: .progress/."""
        return self.root / ".progress"

    def predictions(self, stage: str, task: str) -> Path:
        return self.root / "predictions" / stage / f"{task}.jsonl"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder: the only place that spells a path inside it."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def eval(self) -> EvalFolder:
        return EvalFolder(self.root / "eval")

    def limited_eval(self, limit: int) -> EvalFolder:
        """Where `pecft eval --limit N` writes when N differs from the recipe's: eval-limitN/."""
        return EvalFolder(self.root / f"eval-limit{limit}")

    @property
    def matrix(self) -> Path:
        return self.eval.matrix

    @property
    def heatmap(self) -> Path:
        return self.eval.heatmap

    @property
    def metrics(self) -> Path:
        return self.eval.metrics

    @property
    def train_log(self) -> Path:
        return self.root / "logs" / "train.jsonl"

    def adapter(self, index: int, stage: str) -> Path:
        """The adapter of the model after stage `index` (0-based): adapters/01-<stage>."""
        return self.root / "adapters" / f"{index + 1:02d}-{stage}"

    @property
    def trackers(self) -> Path:
        """What experiment trackers write in the run folder: logs/trackers/."""
        return self.root / "logs" / "trackers"

    def card(self, index: int, stage: str) -> Path:
        """The model card of the adapter after stage `index`: its README.md for the Hub."""
        return self.adapter(index, stage) / "README.md"

    def task_lora(self, index: int, task: str) -> Path:
        """Task `index`'s own LoRA, for strategies that train one per task: task_loras/01-<task>."""
        return self.root / "task_loras" / f"{index + 1:02d}-{task}"

    def predictions(self, stage: str, task: str) -> Path:
        return self.eval.predictions(stage, task)

    @property
    def replay_buffer(self) -> Path:
        """The examples replay keeps, as they stand after the latest stage."""
        return self.root / "replay" / "buffer.jsonl"

    @property
    def router(self) -> Path:
        """The prototype router (strategy.routing), as it stands after the latest stage."""
        return self.root / "router"

    @property
    def checkpoint(self) -> Path:
        """Resumable training state, while a run is unfinished: checkpoint/."""
        return self.root / "checkpoint"

    @property
    def merges(self) -> Path:
        """Scores of merged results (`pecft merge-adapters --eval`), one row per merge."""
        return self.root / "eval" / "merges.csv"

    def merge_predictions(self, merge: str, task: str) -> Path:
        return self.root / "eval" / "merges" / merge / f"{task}.jsonl"


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


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PecftError(f"{path}: not a readable JSON file ({exc}).") from None


LOCK_FILE = ".lock"


class RunLock:
    """One live `pecft train` per run folder: an exclusive `flock` on `<run>/.lock`.

    The operating system drops the lock when the holding process dies, however it dies, so a
    lock left by a killed run is simply taken over; the file records who holds it, for the
    message a second run gets.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.handle: Any = None

    def acquire(self) -> None:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise PecftError(
                f"output_dir: {self.path.parent} is in use by another pecft run ({holder}); "
                "wait for it to finish, or choose another output_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor drops the flock
            self.handle = None


TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}$")  # `.<name>.` + mkstemp's 8 random characters


def contents(root: Path) -> list[Path]:
    """What a folder holds besides the lock file."""
    return [p for p in root.iterdir() if p.name != LOCK_FILE] if root.is_dir() else []


def check_output_folder(root: Path) -> None:
    """Refuse an output folder that holds anything but a pecft run, before touching it."""
    if root.exists() and not root.is_dir():
        raise PecftError(
            f"output_dir: {root} exists and is not a folder; choose another output_dir."
        )
    if contents(root) and not RunFolder(root).state.is_file() and not own(root):
        raise PecftError(
            f"output_dir: {root} already holds files that are not a pecft run; choose an "
            "empty or new folder (set output_dir in the recipe or with --set output_dir=...)."
        )


def same_recipe(path: Path, recipe_text: str) -> bool:
    """Whether a run folder's recipe.yaml is this recipe (whichever pecft version wrote it)."""
    import yaml

    try:
        written = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    wanted = yaml.safe_load(recipe_text)
    if not isinstance(written, dict):
        return False
    written.pop("pecft_version", None)
    wanted.pop("pecft_version", None)
    return written == wanted


def own(root: Path) -> bool:
    """Whether the folder holds only what a run killed before writing its state leaves: empty
    adapters/eval/logs folders, temporaries, and the recipe.yaml pecft wrote."""
    for item in contents(root):
        if TEMPORARY.match(item.name):
            continue
        if item.is_dir() and item.name in ("adapters", "eval", "logs") and not any(item.iterdir()):
            continue
        if item.name == "recipe.yaml" and "pecft_version:" in item.read_text(errors="replace"):
            continue
        return False
    return True


def sweep_temporaries(root: Path) -> None:
    """Remove the temporaries of writes that a killed process never finished."""
    for item in sorted(root.rglob(".*"), reverse=True):
        if TEMPORARY.match(item.name):
            shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)


def claim_run_folder(root: Path, recipe_text: str, overwrite: bool) -> RunState | None:
    """Prepare the (locked) output folder: a new run, or the earlier run of the same recipe.

    Returns the earlier run's state when it is to be resumed (or is already complete). A folder
    holding a run of another recipe is refused unless `overwrite`, which replaces an earlier
    pecft run and nothing else, so a mistyped output_dir can never empty an unrelated folder.
    """
    folder = RunFolder(root)
    state = read_state(folder) if contents(root) else None
    if state is not None and not overwrite:
        same = folder.recipe.is_file() and same_recipe(folder.recipe, recipe_text)
        if not same:
            raise PecftError(
                f"output_dir: {root} holds a run of a different recipe; pass --overwrite to "
                "replace it, or choose another folder with --set output_dir=...."
            )
        sweep_temporaries(root)
        return state
    try:
        for item in contents(root):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        for sub in ("adapters", "eval", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PecftError(f"output_dir: cannot prepare {root} ({exc.strerror}).") from None
    return None


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling, flushed, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one log line; a line is written whole by a single write call."""
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_folder(path: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write a folder under a temporary name, then put it in place in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(scratch)
        if path.exists():
            shutil.rmtree(path)
        scratch.rename(path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def write_matrix(
    path: Path, tasks: list[str], rows: dict[str, list[float | None]], key: str = "stage"
) -> None:
    """matrix.csv: header `stage,<task>...`, row `base`, then one row per trained task.

    merges.csv has the same shape with `merge` as the first column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key, *tasks])
    for stage, scores in rows.items():
        writer.writerow([stage, *("" if s is None else f"{s:.6f}" for s in scores)])
    write_text(path, buffer.getvalue())


def read_matrix(path: Path, key: str = "stage") -> tuple[list[str], dict[str, list[float | None]]]:
    """Task names and rows of a matrix.csv (or of a merges.csv, with key `merge`)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows = {row[0]: [float(v) if v else None for v in row[1:]] for row in reader}
    except (StopIteration, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise PecftError(
            f"{path}: not a pecft matrix (a header `{key},<task>...` and rows of scores): {exc}."
        ) from None
    if header[:1] != [key] or any(len(row) != len(header) - 1 for row in rows.values()):
        raise PecftError(
            f"{path}: not a pecft matrix (a header `{key},<task>...` and rows of scores)."
        )
    return header[1:], rows


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
    sent to their own task's LoRA; `stage_peak_memory_mb` the process's peak once each stage was
    trained, saved and scored (a training summary's peak is taken before the stage's own
    after-training work and its row).
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


@dataclass
class SavedRun:
    """A run folder read back from disk: its state, and what its stages left there."""

    folder: RunFolder
    state: RunState

    @property
    def tasks(self) -> list[str]:
        return self.state.tasks

    @property
    def adapters(self) -> dict[str, Path]:
        """The adapter folder of every trained stage that has one on disk, in stage order."""
        found = {}
        for index, stage in enumerate(self.state.planned_stages):
            adapter = self.folder.adapter(index, stage)
            if (adapter / "adapter_config.json").is_file():
                found[stage] = adapter
        return found

    @property
    def stages(self) -> list[str]:
        """The rows a model can be scored at: the base, then each stage with an adapter."""
        return [BASE, *self.adapters]

    def matrix(self) -> tuple[list[str], dict[str, list[float | None]]]:
        """The evaluation matrix training wrote: its task columns and stage rows."""
        if not self.folder.matrix.is_file():
            raise PecftError(f"{self.folder.root}: the run has no eval/matrix.csv yet.")
        return read_matrix(self.folder.matrix)

    def merges(self, tasks: list[str]) -> dict[str, list[float | None]]:
        """The rows of eval/merges.csv, which must have the matrix's task columns."""
        if not self.folder.merges.is_file():
            return {}
        columns, rows = read_matrix(self.folder.merges, key="merge")
        if columns != tasks:
            raise PecftError(
                f"{self.folder.merges}: its tasks ({', '.join(columns)}) are not the matrix's "
                f"({', '.join(tasks)}); delete it and score the merges again with --eval."
            )
        return rows

    def last_stage(
        self, matrix: dict[str, list[float | None]]
    ) -> tuple[str, list[float | None]] | None:
        """The row of the last trained stage the matrix holds, if any."""
        stages = [s for s in self.state.planned_stages if s in matrix]
        return (stages[-1], matrix[stages[-1]]) if stages else None


def open_run(path: Path) -> SavedRun:
    """Check that `path` is a pecft run folder this version can read."""
    folder = RunFolder(path.resolve())
    if not path.is_dir():
        raise PecftError(f"{path}: no such run folder. Give the output_dir of a `pecft train` run.")
    data = read_json_file(folder.state)
    if data is None:
        raise PecftError(
            f"{path}: not a pecft run folder (it has no run.json). Give the output_dir of a "
            "`pecft train` run."
        )
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise PecftError(
            f"{folder.state}: run folder format {short(version)} is not one this pecft reads "
            f"(format {FORMAT_VERSION}); use the pecft version that wrote it."
        )
    if not folder.recipe.is_file():
        raise PecftError(f"{path}: the run folder is incomplete: recipe.yaml is missing.")
    return SavedRun(folder, RunState.from_json(data, folder.state))


def pick(requested: list[str] | None, available: list[str], what: str, where: Path) -> list[str]:
    """The requested names (or, for stages, numbers) in run order; all when none are given."""
    if not requested:
        return available
    chosen = set()
    for item in requested:
        name = item.strip()
        if name.isdigit() and what == "stage" and 0 <= int(name) < len(available):
            name = available[int(name)]
        if name not in available:
            raise PecftError(
                f"--{what}s {item}: {where} has no {what} '{item}'"
                f"{did_you_mean(item, available) or '.'} Valid: {', '.join(available)}."
            )
        chosen.add(name)
    return [name for name in available if name in chosen]
