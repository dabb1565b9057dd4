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
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pecft_cli import __version__
from pecft_cli.errors import PecftError

FORMAT_VERSION = 1
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "pecft-cli")


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def matrix(self) -> Path:
        return self.root / "eval" / "matrix.csv"

    @property
    def heatmap(self) -> Path:
        return self.root / "eval" / "matrix.png"

    @property
    def metrics(self) -> Path:
        return self.root / "eval" / "metrics.json"

    @property
    def train_log(self) -> Path:
        return self.root / "logs" / "train.jsonl"

    def adapter(self, index: int, task: str) -> Path:
        """The adapter of the model after task `index` (0-based): adapters/01-<task>."""
        return self.root / "adapters" / f"{index + 1:02d}-{task}"

    def task_lora(self, index: int, task: str) -> Path:
        """Task `index`'s own LoRA, for strategies that train one per task: task_loras/01-<task>."""
        return self.root / "task_loras" / f"{index + 1:02d}-{task}"

    def predictions(self, stage: str, task: str) -> Path:
        return self.root / "eval" / "predictions" / stage / f"{task}.jsonl"

    @property
    def merges(self) -> Path:
        """Scores of merged results (`pecft merge-adapters --eval`), one row per merge."""
        return self.root / "eval" / "merges.csv"


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


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
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


def read_state(folder: RunFolder) -> dict[str, Any] | None:
    """run.json, or None when the folder has none."""
    state = read_json_file(folder.state)
    if state is not None and not isinstance(state, dict):
        raise PecftError(f"{folder.state}: not a pecft run state file (expected a JSON object).")
    return state


def open_run_folder(root: Path, overwrite: bool) -> RunFolder:
    """Claim the output folder for a new run, refusing to mix it with what is already there.

    `overwrite` replaces an earlier pecft run (a folder with run.json) and nothing else, so a
    mistyped output_dir can never empty an unrelated folder.
    """
    folder = RunFolder(root)
    if root.exists() and not root.is_dir():
        raise PecftError(
            f"output_dir: {root} exists and is not a folder; choose another output_dir."
        )
    if root.is_dir() and any(root.iterdir()):
        if not folder.state.is_file():
            raise PecftError(
                f"output_dir: {root} already holds files that are not a pecft run; choose an "
                "empty or new folder (set output_dir in the recipe or with --set output_dir=...)."
            )
        if not overwrite:
            raise PecftError(
                f"output_dir: {root} already holds a run; pass --overwrite to replace it, or "
                "choose another folder with --set output_dir=...."
            )
        shutil.rmtree(root)
    try:
        for sub in ("adapters", "eval", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PecftError(f"output_dir: cannot create {root} ({exc.strerror}).") from None
    return folder


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


def new_state(name: str, seed: int, strategy: str, tasks: list[str]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "pecft_version": __version__,
        "name": name,
        "status": "running",
        "seed": seed,
        "strategy": strategy,
        "tasks": tasks,
        "tasks_done": [],
        "started_at": now(),
        "finished_at": None,
        "command": sys.argv,
        "versions": library_versions(),
        "timings": {
            "load_seconds": None,
            "train_seconds": {},
            "eval_seconds": {},
            "wall_seconds": None,
        },
        "training": {},
    }
