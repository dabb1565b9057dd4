"""Claiming a run folder: one live `pecft train` per folder, and what may be replaced."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from pecft_cli.errors import PecftError
from pecft_cli.recipe.schema import Recipe
from pecft_cli.runfolder.layout import RunFolder
from pecft_cli.runfolder.state import RunState, now, read_state

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
    """Whether a run folder's recipe.yaml is this recipe (whichever pecft version wrote it, so
    a key it did not know counts at its default)."""
    import yaml

    try:
        written = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    wanted = yaml.safe_load(recipe_text)
    if not isinstance(written, dict):
        return False
    return with_defaults(written) == with_defaults(wanted)


def with_defaults(raw: dict[str, Any]) -> Any:
    """A recipe mapping with every key the schema has, or as it is when it does not validate."""
    from pydantic import ValidationError

    raw.pop("pecft_version", None)
    try:
        return Recipe.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        return raw


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
