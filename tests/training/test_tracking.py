"""Experiment trackers: a run with `logging.report_to: [tensorboard]` leaves event files whose
scalars are the run's own log, matrix and metrics; a tracker that cannot work is refused before
anything is loaded or written."""

import json
import os
from pathlib import Path

import pytest
from accelerate import utils

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run
from pecft_cli.training.tracking import check_trackers


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        reader = EventAccumulator(str(events))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in reader.Scalars(tag))
    return found


def test_tensorboard_scalars_match_the_runs_log_matrix_and_metrics(recipe_file: Path) -> None:
    overrides = ["logging.report_to=[tensorboard]", "training.max_steps=3"]
    result = run(load_recipe(recipe_file, overrides))
    logged = scalars(result.folder / "logs/trackers")
    lines = [json.loads(line) for line in (result.folder / "logs/train.jsonl").open()]
    steps = [3 * entry["task_index"] + entry["step"] for entry in lines]  # 3 steps a stage
    assert [step for step, _ in logged["train/loss"]] == steps
    assert [value for _, value in logged["train/loss"]] == pytest.approx([e["loss"] for e in lines])
    assert [value for _, value in logged["train/lr"]] == pytest.approx([e["lr"] for e in lines])
    tasks, rows = read_matrix(result.folder / "eval/matrix.csv")
    for column, task in enumerate(tasks):
        assert [step for step, _ in logged[f"matrix/{task}"]] == [0, 3, 6]
        row_values = [rows[stage][column] for stage in ("base", "codes", "yesno")]
        assert [value for _, value in logged[f"matrix/{task}"]] == pytest.approx(row_values)
    metrics = json.loads((result.folder / "eval/metrics.json").read_text())
    assert logged["metrics/acc"][0][0] == 6
    assert logged["metrics/acc"][0][1] == pytest.approx(metrics["acc"])
    config = next((result.folder / "logs/trackers").rglob("hparams.yml")).read_text()
    assert "strategy: seq" in config and "token" not in config.lower()


def test_a_tracker_without_its_package_is_refused(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(utils, "is_wandb_available", lambda: False)
    recipe = load_recipe(recipe_file, ["logging.report_to=[wandb]"])
    with pytest.raises(PecftError, match="'wandb' needs the wandb package.*pip install wandb"):
        check_trackers(recipe, recipe_file.parent / "run")


def test_an_unknown_tracker_suggests_the_close_one(recipe_file: Path) -> None:
    with pytest.raises(PecftError, match="tensorboard"):
        load_recipe(recipe_file, ["logging.report_to=[tensorbord]"])


def test_a_read_only_run_folder_is_refused(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root writes into any folder, so the folder's mode alone cannot show it; ask os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    recipe = load_recipe(recipe_file, ["logging.report_to=[tensorboard]"])
    with pytest.raises(PecftError, match=f"{locked} is read-only"):
        check_trackers(recipe, locked / "run")
    check_trackers(recipe, tmp_path / "open" / "run")
