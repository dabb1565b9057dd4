"""The task loop on the tiny model: adapters that stock PEFT reloads, and seeded determinism."""

import json
import warnings
from pathlib import Path

import pytest
from conftest import invoke, rescore_with_stock_peft
from safetensors.torch import load_file

from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.schema import output_dir
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run


def test_each_adapter_reloaded_by_stock_peft_reproduces_its_matrix_row(recipe_file: Path) -> None:
    result = run(load_recipe(recipe_file, ["training.max_steps=6"]))
    tasks, rows = read_matrix(result.folder / "eval/matrix.csv")
    assert tasks == ["codes", "yesno"]
    for stage, name in enumerate(tasks, start=1):
        assert rescore_with_stock_peft(result.folder, stage) == rows[name]


def test_training_changes_the_adapter_and_lowers_the_loss(recipe_file: Path) -> None:
    result = run(load_recipe(recipe_file, ["training.max_steps=20"]))
    summary = result.state.training["codes"]
    assert summary["last_loss"] < summary["first_loss"]
    weights = load_file(result.folder / "adapters/01-codes/adapter_model.safetensors")
    assert any(
        key.endswith("lora_B.weight") and value.abs().sum() > 0 for key, value in weights.items()
    )


def test_log_lines_average_the_steps_since_the_last_and_start_at_step_one(
    recipe_file: Path, tmp_path: Path
) -> None:
    every = run(load_recipe(recipe_file, ["training.max_steps=7", f"output_dir={tmp_path / 'a'}"]))
    sparse = run(
        load_recipe(
            recipe_file,
            ["training.max_steps=7", "training.log_every=5", f"output_dir={tmp_path / 'b'}"],
        )
    )

    def losses(folder: Path) -> dict[int, float]:
        lines = [
            json.loads(line) for line in (folder / "logs/train.jsonl").read_text().splitlines()
        ]
        return {entry["step"]: entry["loss"] for entry in lines if entry["task"] == "codes"}

    each, logged = losses(every.folder), losses(sparse.folder)
    assert sorted(logged) == [1, 5, 7]
    assert logged[1] == each[1]
    assert logged[5] == pytest.approx(sum(each[s] for s in range(2, 6)) / 4, abs=1e-4)
    assert logged[7] == pytest.approx((each[6] + each[7]) / 2, abs=1e-4)
    summary = sparse.state.training["codes"]
    assert (summary["first_loss"], summary["last_loss"]) == (logged[1], logged[7])


def test_same_seed_gives_identical_adapters(recipe_file: Path, tmp_path: Path) -> None:
    first = run(load_recipe(recipe_file, [f"output_dir={tmp_path / 'a'}"]))
    second = run(load_recipe(recipe_file, [f"output_dir={tmp_path / 'b'}"]))
    for adapter in ("01-codes", "02-yesno"):
        a = load_file(first.folder / "adapters" / adapter / "adapter_model.safetensors")
        b = load_file(second.folder / "adapters" / adapter / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        assert all(a[key].equal(b[key]) for key in a)
    assert first.matrix == second.matrix


def test_progress_events_follow_the_loop(recipe_file: Path) -> None:
    events: list[tuple[str, dict]] = []
    run(load_recipe(recipe_file), on_event=lambda kind, fields: events.append((kind, fields)))
    kinds = [kind for kind, _ in events if kind != "status"]
    assert kinds == (
        ["eval"] * 2
        + ["task_start"]
        + ["step"] * 3
        + ["task_end"]
        + ["eval"] * 2
        + ["task_start"]
        + ["step"] * 3
        + ["task_end"]
        + ["eval"] * 2
    )
    steps = [fields for kind, fields in events if kind == "step"]
    assert all(fields["tokens_per_s"] > 0 for fields in steps)


def test_a_failure_mid_run_is_recorded_and_keeps_the_finished_stages(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pecft_cli.training.loop as train

    class FailOnSecondStage(train.StageTrainer):
        def train(self) -> dict:
            if self.plan.stage.index == 1:
                raise RuntimeError("disk full")
            return super().train()

    monkeypatch.setattr(train, "StageTrainer", FailOnSecondStage)
    recipe = load_recipe(recipe_file)
    with pytest.raises(RuntimeError, match="disk full"):
        run(recipe)
    folder = output_dir(recipe)
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "failed"
    assert state["error"] == "RuntimeError: disk full"
    assert state["tasks_done"] == ["codes"]
    tasks, rows = read_matrix(folder / "eval/matrix.csv")
    assert list(rows) == ["base", "codes"]
    assert (folder / "adapters/01-codes/adapter_model.safetensors").is_file()


def test_the_seed_does_not_depend_on_what_loading_draws(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a first GGUF conversion initialises a model (drawing random numbers); a cached load does not
    import torch

    import pecft_cli.training.loop as train

    plain = run(load_recipe(recipe_file, [f"output_dir={tmp_path / 'plain'}"]))
    original = train.load_model

    def drawing_load(*args, **kwargs):
        torch.rand(1000)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "load_model", drawing_load)
    drawn = run(load_recipe(recipe_file, [f"output_dir={tmp_path / 'drawn'}"]))
    assert drawn.matrix == plain.matrix
    assert drawn.state.training == {
        task: {
            **summary,
            "seconds": drawn.state.training[task]["seconds"],
            "tokens_per_s": drawn.state.training[task]["tokens_per_s"],
            "peak_memory_mb": drawn.state.training[task]["peak_memory_mb"],
        }
        for task, summary in plain.state.training.items()
    }


def test_gradient_checkpointing_recomputes_and_trains_the_same_adapter(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import transformers.modeling_utils

    calls = []
    original = transformers.modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    common = ["training.max_steps=4", "lora.dropout=0.1"]
    plain = run(load_recipe(recipe_file, [*common, f"output_dir={tmp_path / 'plain'}"]))
    assert not calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = run(
            load_recipe(
                recipe_file,
                [*common, "training.gradient_checkpointing=true", f"output_dir={tmp_path / 'gc'}"],
            )
        )
    assert calls
    switches = ("gradient_checkpointing_enable", "gradient_checkpointing_disable")
    assert not [w for w in caught if any(name in str(w.message) for name in switches)]
    for adapter in ("01-codes", "02-yesno"):
        a = load_file(plain.folder / "adapters" / adapter / "adapter_model.safetensors")
        b = load_file(saved.folder / "adapters" / adapter / "adapter_model.safetensors")
        assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_gradient_checkpointing_on_a_model_without_it_is_refused(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import LlamaForCausalLM

    from pecft_cli.errors import PecftError

    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    recipe = load_recipe(recipe_file, ["training.gradient_checkpointing=true"])
    with pytest.raises(PecftError, match="does not support gradient checkpointing"):
        run(recipe)


def test_a_diverging_task_stops_at_its_step_with_exit_3_and_keeps_what_came_before(
    recipe_file: Path,
) -> None:
    overrides = ["tasks.1.training.lr=1e30", "training.max_steps=6", "training.checkpoint_every=2"]
    result = invoke("train", recipe_file, *[a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert "error: task 'yesno' diverged at step " in message
    assert "its gradients became NaN" in message and "--overwrite" in message
    assert "Traceback" not in result.output
    folder = recipe_file.parent / "run"
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "diverged" and state["tasks_done"] == ["codes"]
    assert "diverged at step" in state["error"]
    assert [p.name for p in (folder / "adapters").iterdir()] == ["01-codes"]
    weights = load_file(folder / "adapters/01-codes/adapter_model.safetensors")
    assert all(value.isfinite().all() for value in weights.values())
    saved = json.loads((folder / "checkpoint/checkpoint.json").read_text())
    assert (saved["stage_index"], saved["step"]) == (1, 0)  # the end of the last good stage
    logged = [json.loads(line) for line in (folder / "logs/train.jsonl").read_text().splitlines()]
    assert all(entry["loss"] == entry["loss"] for entry in logged)  # no NaN logged


def four_task_recipe(recipe_file: Path, *more: str):
    """The two tasks twice over: a stream long enough for sparse scoring to leave cells out."""
    import yaml

    recipe = yaml.safe_load(recipe_file.read_text())
    twins = [dict(task, name=task["name"] + "_again") for task in recipe["tasks"]]
    recipe["tasks"] += twins
    path = recipe_file.parent / "four.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return load_recipe(path, ["training.max_steps=2", *more])


def test_sparse_cells_score_what_the_metrics_need_and_match_a_full_run(
    recipe_file: Path,
) -> None:
    full = run(four_task_recipe(recipe_file, f"output_dir={recipe_file.parent / 'full'}"))
    sparse = run(
        four_task_recipe(
            recipe_file, "evaluation.cells=sparse", f"output_dir={recipe_file.parent / 'sparse'}"
        )
    )
    _, every = read_matrix(full.folder / "eval/matrix.csv")
    tasks, some = read_matrix(sparse.folder / "eval/matrix.csv")
    scored = {
        stage: [t for t, v in zip(tasks, row, strict=True) if v is not None]
        for stage, row in some.items()
    }
    assert scored["codes"] == ["codes", "yesno"]
    assert scored["yesno"] == ["yesno", "codes_again"]
    assert scored["codes_again"] == ["codes_again", "yesno_again"]
    assert scored["base"] == scored["yesno_again"] == tasks
    for stage, row in some.items():
        assert all(v is None or v == every[stage][j] for j, v in enumerate(row))
    one = json.loads((full.folder / "eval/metrics.json").read_text())
    other = json.loads((sparse.folder / "eval/metrics.json").read_text())
    for key in ("acc", "bwt", "fwt", "learning_accuracy"):
        assert other[key] == one[key]
    assert other["cells"]["scored"] == 10 and other["cells"]["of"] == 16
    assert "cells" not in one
    assert not (sparse.folder / "eval/predictions/codes/codes_again.jsonl").exists()


def test_full_every_scores_every_kth_row_whole(recipe_file: Path) -> None:
    overrides = ["evaluation.cells=sparse", "evaluation.full_every=2"]
    result = run(four_task_recipe(recipe_file, *overrides))
    tasks, rows = read_matrix(result.folder / "eval/matrix.csv")
    assert None not in rows["yesno"] and None not in rows["yesno_again"]
    assert rows["codes"][2:] == [None, None] and rows["codes_again"][:2] == [None, None]
