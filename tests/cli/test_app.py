"""The command line end to end on the tiny model: exit codes, messages, the run folder contract."""

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import invoke, snapshot, write_jsonl


def test_validate_shows_tasks_and_marked_first_example(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file)
    assert result.exit_code == 0, result.output
    assert "1. codes  metric exact_match  train 8 rows  eval 4 rows" in result.output
    assert "prompt: 'Country: France Code:'" in result.output
    assert "⟦ĠFRA·</s>⟧" in result.output
    assert "choices: [' yes', ' no']" in result.output
    assert not (recipe_file.parent / "run").exists()


def test_train_writes_the_run_folder_contract(recipe_file: Path) -> None:
    result = invoke("train", recipe_file)
    assert result.exit_code == 0, result.output
    assert re.search(r"\(\d+s: training \d+s, evaluation \d+s = \d+%\)", result.output)
    run = recipe_file.parent / "run"
    assert (run / "adapters/01-codes/adapter_config.json").is_file()
    assert (run / "adapters/02-yesno/adapter_model.safetensors").is_file()
    with (run / "eval/matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["stage", "codes", "yesno"]
    assert [r[0] for r in rows[1:]] == ["base", "codes", "yesno"]
    assert all(0.0 <= float(v) <= 1.0 for r in rows[1:] for v in r[1:])
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert {"acc", "bwt", "fwt", "forgetting", "tasks"} <= set(metrics)
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "completed"
    assert state["tasks_done"] == ["codes", "yesno"]
    assert state["seed"] == 3
    assert {"torch", "transformers", "peft", "accelerate", "cpu", "cpu_count"} <= set(
        state["versions"]
    )
    assert state["peak_memory_mb"]["cpu_rss"] > 100
    stage_peaks = state["stage_peak_memory_mb"]
    assert list(stage_peaks) == ["codes", "yesno"]
    for stage, peak in stage_peaks.items():  # taken after the stage's row, so never below
        assert state["training"][stage]["peak_memory_mb"]["cpu_rss"] <= peak["cpu_rss"]
    assert stage_peaks["yesno"]["cpu_rss"] <= state["peak_memory_mb"]["cpu_rss"]
    log = [json.loads(line) for line in (run / "logs/train.jsonl").read_text().splitlines()]
    assert [(e["task"], e["step"]) for e in log] == [("codes", s) for s in (1, 2, 3)] + [
        ("yesno", s) for s in (1, 2, 3)
    ]
    assert all({"loss", "lr", "tokens_per_s"} <= set(e) for e in log)
    predictions = (run / "eval/predictions/codes/codes.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert {"input", "target", "prediction", "correct"} <= set(json.loads(predictions[0]))
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert resolved["output_dir"] == str(run)
    assert Path(resolved["tasks"][0]["train"]).is_absolute()


def test_resolved_recipe_reruns_to_the_same_matrix(recipe_file: Path) -> None:
    assert invoke("train", recipe_file).exit_code == 0
    run = recipe_file.parent / "run"
    first = (run / "eval/matrix.csv").read_text()
    result = invoke("train", run / "recipe.yaml", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run / "eval/matrix.csv").read_text() == first


def test_a_finished_run_says_so_and_another_recipe_is_refused(recipe_file: Path) -> None:
    assert invoke("train", recipe_file).exit_code == 0
    run = recipe_file.parent / "run"
    before = snapshot(run)
    again = invoke("train", recipe_file, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["already_complete"] is True
    assert "already complete" not in again.stdout
    assert snapshot(run) == before
    result = invoke("train", recipe_file, "--set", "training.lr=0.5")
    assert result.exit_code == 2
    assert "holds a run of a different recipe; pass --overwrite" in " ".join(result.output.split())
    assert snapshot(run) == before


def test_overwrite_never_empties_a_folder_that_is_not_a_run(recipe_file: Path) -> None:
    run = recipe_file.parent / "run"
    run.mkdir()
    (run / "thesis.tex").write_text("precious")
    result = invoke("train", recipe_file, "--overwrite")
    assert result.exit_code == 2
    assert "not a pecft run" in result.output
    assert (run / "thesis.tex").read_text() == "precious"


def break_data_file(recipe: Path) -> list[str]:
    (recipe.parent / "data/codes/train.jsonl").unlink()
    return []


def empty_dataset(recipe: Path) -> list[str]:
    (recipe.parent / "data/yesno/eval.jsonl").write_text("")
    return []


def missing_field(recipe: Path) -> list[str]:
    write_jsonl(recipe.parent / "data/codes/train.jsonl", [{"country": "France"}])
    return []


BAD_INPUTS = {
    "unknown key": (
        lambda r: ["--set", "tasks.0.promt=x"],
        "unknown key 'promt'; did you mean 'prompt'?",
    ),
    "wrong type": (lambda r: ["--set", "training.epochs=two"], "training.epochs"),
    "missing data file": (lambda r: break_data_file(r), "data file"),
    "template field missing": (lambda r: missing_field(r), "names the field 'code'"),
    "empty dataset": (lambda r: empty_dataset(r), "holds no rows"),
    "unknown model path": (
        lambda r: ["--set", "model.path=/no/such/model"],
        "model.path: /no/such/model",
    ),
    "bad --set path": (lambda r: ["--set", "lora.rank=4"], "unknown key 'rank'"),
    "unknown strategy option": (
        lambda r: ["--set", "strategy.name=olora", "--set", "strategy.options.lamda1=1"],
        "strategy.options.lamda1: unknown option; did you mean 'lambda1'?",
    ),
    "replay fraction out of range": (
        lambda r: ["--set", "strategy.name=replay", "--set", "strategy.options.fraction=1.5"],
        "strategy.options.fraction",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["validate", "train"])
def test_bad_input_exits_2_with_message_and_leaves_run_untouched(
    recipe_file: Path, case: str, command: str
) -> None:
    assert invoke("train", recipe_file).exit_code == 0
    run = recipe_file.parent / "run"
    before = snapshot(run)
    make_bad, expected = BAD_INPUTS[case]
    extra = make_bad(recipe_file)
    result = invoke(command, recipe_file, *extra, *(["--overwrite"] if command == "train" else []))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "\nerror: " in "\n" + result.output
    assert "Traceback" not in result.output
    assert snapshot(run) == before


def test_every_command_prints_one_json_document_on_stdout(
    recipe_file: Path, tmp_path: Path
) -> None:
    run = recipe_file.parent / "run"
    commands = [
        ["validate", recipe_file],
        ["train", recipe_file],
        ["eval", run, "--tasks", "codes"],
        ["report", run],
        ["report", run, run],
        ["merge-adapters", run, "--into-base", "--tasks", "yesno", "--out", tmp_path / "m"],
        ["generate", run, "--task", "codes", "France"],
    ]
    for command in commands:
        result = invoke(*command, "--json")
        assert result.exit_code == 0, (command, result.output)
        json.loads(result.stdout)  # one document, nothing else on stdout


@pytest.mark.parametrize(("env", "colored"), [({}, True), ({"NO_COLOR": "1"}, False)])
def test_no_color_is_respected(recipe_file: Path, env: dict, colored: bool) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pecft_cli", "validate", str(recipe_file), "--set", "seed=x"],
        env={**os.environ, "FORCE_COLOR": "1", **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert ("\x1b[" in done.stderr) is colored


def test_lora_targets_the_model_lacks_are_refused_at_validate(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, "--set", "lora.target_modules=[q_proj,v_prj]")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "lora.target_modules: the model has no module 'v_prj'; did you mean 'v_proj'?" in message
    assert "Its linear layers:" in message and "o_proj" in message


def test_a_full_disk_mid_run_is_a_clear_error_and_leaves_whole_files(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from pecft_cli.runfolder import atomic

    original, calls = atomic.write_bytes, []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, data)

    monkeypatch.setattr(atomic, "write_bytes", fills_up)
    result = invoke("train", recipe_file)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "No space left on device" in message and "run the same command again" in message
    assert "Traceback" not in result.output
    run = recipe_file.parent / "run"
    for path in run.rglob("*.json*"):
        for line in (
            path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        ):
            json.loads(line)
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]


def test_secrets_in_the_environment_never_reach_the_run_folder(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_not_a_real_token_4d1f9"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("WANDB_API_KEY", secret)
    result = invoke("train", recipe_file, "--json")
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    for path in (recipe_file.parent / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
