"""`pecft eval` and `pecft report` on a tiny trained run: reproduction, subsets, resume, errors."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, snapshot, write_jsonl, write_recipe

import pecft_cli.evaluation.rerun as eval_run
from pecft_cli.evaluation.rerun import EvalOptions, evaluate_run
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    run(load_recipe(write_recipe(folder, tiny_model)))
    return folder / "run"


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, so each test may change it."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_eval_reproduces_the_matrix_train_wrote(run_dir: Path) -> None:
    before = (run_dir / "eval/matrix.csv").read_bytes()
    metrics_before = json.loads((run_dir / "eval/metrics.json").read_text())
    shutil.rmtree(run_dir / "eval/predictions")
    result = evaluate_run(run_dir)
    assert (run_dir / "eval/matrix.csv").read_bytes() == before
    assert json.loads((run_dir / "eval/metrics.json").read_text()) == metrics_before
    assert result.metrics == metrics_before
    predictions = run_dir / "eval/predictions/yesno/codes.jsonl"
    first = json.loads(predictions.read_text().splitlines()[0])
    assert {"input", "target", "prediction", "correct", "score"} <= set(first)
    assert (run_dir / "eval/matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "eval/.progress").exists()


def test_subsets_replace_only_their_cells(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset"
    result = evaluate_run(run_dir, EvalOptions(tasks=["yesno"], stages=["base", "2"], out=out))
    tasks, rows = read_matrix(out / "matrix.csv")
    _, full = read_matrix(run_dir / "eval/matrix.csv")
    assert tasks == ["codes", "yesno"]
    assert rows == {"base": [None, full["base"][1]], "yesno": [None, full["yesno"][1]]}
    assert result.metrics is None
    assert not (out / "metrics.json").exists()


def test_limit_goes_to_its_own_folder(run_dir: Path) -> None:
    evaluate_run(run_dir, EvalOptions(limit=2))
    predictions = run_dir / "eval-limit2/predictions/base/codes.jsonl"
    assert len(predictions.read_text().splitlines()) == 2


def test_an_interrupted_eval_resumes_and_overwrites_nothing_until_done(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(run_dir / "eval")
    original = eval_run.score_shared
    calls: list[str] = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[3].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(eval_run, "score_shared", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run_dir)
    after = {k: v for k, v in snapshot(run_dir / "eval").items() if not k.startswith(".progress")}
    assert after == before
    monkeypatch.setattr(eval_run, "score_shared", original)
    result = evaluate_run(run_dir)
    assert result.resumed_cells == 2
    assert snapshot(run_dir / "eval") == before | {
        "matrix.png": snapshot(run_dir / "eval")["matrix.png"]
    }


def test_extra_data_is_scored_at_every_stage(run_dir: Path, tmp_path: Path) -> None:
    extra = write_jsonl(
        tmp_path / "general.jsonl",
        [
            {"prompt": "Is ice cold?", "target": "yes", "choices": ["yes", "no"]},
            {"prompt": "Is fire cold?", "target": "no", "choices": ["yes", "no"]},
        ],
    )
    result = evaluate_run(run_dir, EvalOptions(data=[extra], tasks=["codes"]))
    assert result.extra_names == ["general"]
    assert list(result.extra) == ["base", "codes", "yesno"]
    tasks, rows = read_matrix(run_dir / "eval/extra.csv")
    assert tasks == ["general"] and list(rows) == ["base", "codes", "yesno"]


def test_eval_command_json_is_machine_readable(run_dir: Path) -> None:
    result = invoke("eval", run_dir, "--tasks", "codes", "--stages", "base", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["matrix"]["base"][0] is not None


def corrupt_adapter(run_dir: Path) -> list[str]:
    (run_dir / "adapters/01-codes/adapter_model.safetensors").write_bytes(b"not a tensor file")
    return []


def old_format(run_dir: Path) -> list[str]:
    state = json.loads((run_dir / "run.json").read_text())
    state["format_version"] = 99
    (run_dir / "run.json").write_text(json.dumps(state))
    return []


BAD_EVALS = {
    "missing folder": (lambda r: ["--out", str(r / "x")], "no such run folder", "gone"),
    "not a run": (lambda r: [], "has no run.json", "no-state"),
    "unknown version": (old_format, "run folder format 99", None),
    "unknown task": (lambda r: ["--tasks", "cods"], "did you mean 'codes'?", None),
    "unknown stage": (lambda r: ["--stages", "7"], "no stage '7'", None),
    "adapter does not load": (corrupt_adapter, "the adapter does not load", None),
    "limit 0": (lambda r: ["--limit", "0"], "--limit 0", None),
    "extra data not a list": (lambda r: ["--data", str(r / "run.json")], "list of objects", None),
}


@pytest.mark.parametrize("case", sorted(BAD_EVALS))
def test_bad_eval_input_exits_2_and_changes_nothing(run_dir: Path, case: str) -> None:
    make, expected, damage = BAD_EVALS[case]
    args = make(run_dir)
    target = run_dir
    if damage == "gone":
        target = run_dir.parent / "missing"
    elif damage == "no-state":
        (run_dir / "run.json").unlink()
    before = snapshot(run_dir)
    result = invoke("eval", target, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert expected in " ".join(result.output.split())
    assert snapshot(run_dir) == before


def test_report_one_run_and_compare_two(run_dir: Path, tmp_path: Path) -> None:
    one = invoke("report", run_dir)
    assert one.exit_code == 0, one.output
    assert "Evaluation matrix" in one.output and "Forgetting" in one.output
    other = Path(shutil.copytree(run_dir, tmp_path / "other"))
    as_csv = invoke("report", run_dir, other, "--csv")
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0].startswith("run,name,strategy,status,tasks,acc,bwt,fwt,forgetting")
    assert len(lines) == 3
    as_json = json.loads(invoke("report", run_dir, other, "--json").stdout)
    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    assert as_json[0]["acc"] == pytest.approx(metrics["acc"])
    assert as_json[1]["strategy"] == "seq"
