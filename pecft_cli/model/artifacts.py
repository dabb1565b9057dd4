"""What a folder on disk holds and what it needs to run: a run, an adapter, or a whole model.

`pecft generate` and `pecft merge-adapters` accept any of these; this module finds, for each,
the adapter to apply, the base model it was trained on and the run (recipe, tasks) it came from,
and checks an adapter before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from peft import PeftConfig, PeftModel
from safetensors import safe_open

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.schema import Recipe
from pecft_cli.recipe.sections import ModelSection
from pecft_cli.runfolder.atomic import read_json_file
from pecft_cli.runfolder.layout import BASE, RunFolder
from pecft_cli.runfolder.saved import SavedRun, open_run, pick

MERGE_FILE = "merge.json"


@dataclass
class Artifact:
    """A loadable result: `base` plus `adapter` (None for a whole model), its run if known,
    and the run's stage when a run folder was given."""

    path: Path
    base: ModelSection
    adapter: Path | None
    run: Path | None
    stage: str | None = None
    saved: SavedRun | None = None  # the run folder given, opened once

    @cached_property
    def recipe(self) -> Recipe | None:
        """The recipe of the run the result came from, parsed once; None for a bare model."""
        if self.saved is not None:
            return self.saved.recipe
        return load_recipe(RunFolder(self.run).recipe) if self.run else None


def is_run(path: Path) -> bool:
    folder = RunFolder(path)
    return folder.state.is_file() and folder.recipe.is_file()


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def is_model(path: Path) -> bool:
    return (path / "config.json").is_file() and not is_adapter(path)


def adapter_run(adapter: Path) -> Path | None:
    """The run folder an adapter belongs to: its grandparent (adapters/NN-task, task_loras/NN-task),
    or the run a merge was made from."""
    if is_run(adapter.parent.parent):
        return adapter.parent.parent
    merged = merge_record(adapter)
    if merged and merged.get("run") and is_run(Path(merged["run"])):
        return Path(merged["run"])
    return None


def merge_record(folder: Path) -> dict[str, Any] | None:
    """The merge.json that `pecft merge-adapters` wrote into its output, if any."""
    record = read_json_file(folder / MERGE_FILE)
    return record if isinstance(record, dict) else None


def adapter_config(adapter: Path) -> PeftConfig:
    """An adapter's PEFT config, read and checked with its weights before any model is loaded."""
    try:
        config = PeftConfig.from_pretrained(adapter)
        with safe_open(adapter / "adapter_model.safetensors", framework="pt") as weights:
            if not list(weights.keys()):
                raise ValueError("it holds no weights")
    except Exception as exc:
        raise adapter_error(adapter, exc) from None
    return config


def applied(model: Any, adapter: Path) -> PeftModel:
    """`model` with one adapter folder applied by stock PEFT; a clear error when it does not
    load."""
    try:
        return PeftModel.from_pretrained(model, adapter)
    except Exception as exc:
        raise adapter_error(adapter, exc) from None


def adapter_error(adapter: Path, exc: Exception) -> PecftError:
    return PecftError(
        f"{adapter}: the adapter does not load ({type(exc).__name__}: {exc}). Give a folder that "
        "PEFT's save_pretrained wrote (adapter_config.json and adapter_model.safetensors); for a "
        "run's stage, re-train that task or leave the stage out."
    )


def base_of(adapter: Path, base: str | None = None) -> ModelSection:
    """The base model an adapter applies to: `base` when given, else its run's or merge's model,
    else the model named in its adapter_config.json."""
    if base:
        return ModelSection(path=base)
    run = adapter_run(adapter)
    if run is not None:
        return load_recipe(RunFolder(run).recipe).model
    merged = merge_record(adapter)
    if merged and isinstance(merged.get("base"), dict):
        return ModelSection.model_validate(merged["base"])
    named = adapter_config(adapter).base_model_name_or_path
    if not named:
        raise PecftError(
            f"{adapter}: the adapter does not name its base model; give it with --base."
        )
    return ModelSection(path=named)


def open_artifact(path: Path, stage: str | None = None, base: str | None = None) -> Artifact:
    """Resolve a run folder (one stage's adapter, the last by default), an adapter folder or a
    model folder into what has to be loaded."""
    path = path.resolve()
    if is_run(path):
        saved = open_run(path)
        stages = saved.stages
        (chosen,) = pick([stage], stages, "stage", path) if stage else stages[-1:]
        adapter = None if chosen == BASE else saved.adapters[chosen]
        model = ModelSection(path=base) if base else saved.recipe.model
        return Artifact(path, model, adapter, path, chosen, saved)
    if stage:
        raise PecftError(
            f"--stage {stage}: {path} is not a run folder; --stage picks a run's stage."
        )
    if is_adapter(path):
        adapter_config(path)
        return Artifact(path, base_of(path, base), path, adapter_run(path))
    if is_model(path):
        merged = merge_record(path) or {}
        run = Path(merged["run"]) if merged.get("run") and is_run(Path(merged["run"])) else None
        dtype = merged.get("base", {}).get("dtype", "float32")
        return Artifact(path, ModelSection(path=str(path), dtype=dtype), None, run)
    raise PecftError(
        f"{path}: not a pecft run folder, a PEFT adapter folder (adapter_config.json) or a model "
        "folder (config.json). Give one of those."
    )
