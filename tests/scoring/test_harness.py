"""General ability at every stage: `evaluation.harness` scores lm-evaluation-harness tasks (local
task YAMLs, offline) after the base row and every stage, as the harness itself scores them."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import invoke
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run

pytest.importorskip("lm_eval")

QUESTIONS = [
    {"q": "Is ice cold?", "a": "yes"},
    {"q": "Is fire cold?", "a": "no"},
    {"q": "Is snow white?", "a": "yes"},
    {"q": "Is coal white?", "a": "no"},
]


def harness_task(folder: Path) -> Path:
    """A local multiple-choice harness task over a small jsonl file."""
    data = folder / "general.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS), encoding="utf-8")
    spec = {
        "task": "general_yesno",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{q}}",
        "doc_to_choice": ["yes", "no"],
        "doc_to_target": "{{a}}",
        "metric_list": [{"metric": "acc"}],
    }
    path = folder / "general.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")


def test_a_harness_row_per_stage_as_the_harness_scores_it(
    recipe_file: Path, tiny_model: Path
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = harness_task(recipe_file.parent)
    overrides = [f"evaluation.harness=[{task.name}]", "training.max_steps=3"]
    result = run(load_recipe(recipe_file, overrides))
    names, rows = read_matrix(result.folder / "eval/harness.csv")
    assert names == ["general_yesno"] and list(rows) == ["base", "codes", "yesno"]
    assert (result.folder / "eval/harness.png").is_file()
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result.folder / "adapters/02-yesno"
    )
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model))
    manager = TaskManager(include_path=str(task.parent), include_defaults=False)
    alone = simple_evaluate(model=lm, tasks=["general_yesno"], task_manager=manager)
    assert rows["yesno"][0] == pytest.approx(alone["results"]["general_yesno"]["acc,none"])
    metrics = json.loads((result.folder / "eval/metrics.json").read_text())
    change = metrics["harness"]["general_yesno"]
    assert change["change"] == pytest.approx(rows["yesno"][0] - rows["base"][0])
    shown = invoke("report", result.folder)
    assert shown.exit_code == 0 and "General ability" in shown.output
    document = json.loads(invoke("report", result.folder, "--json").output)
    assert document["harness"] == {"tasks": names, "matrix": rows}


def test_harness_problems_are_refused_before_training(recipe_file: Path) -> None:
    missing = recipe_file.parent / "nowhere.yaml"
    with pytest.raises(PecftError, match="nowhere.yaml does not exist"):
        run(load_recipe(recipe_file, [f"evaluation.harness=[{missing}]"]))
    nameless = recipe_file.parent / "nameless.yaml"
    nameless.write_text("dataset_path: json\n")
    with pytest.raises(PecftError, match="names no `task:`"):
        run(load_recipe(recipe_file, [f"evaluation.harness=[{nameless}]"]))
    assert not (recipe_file.parent / "run").exists()


def test_an_unknown_harness_task_is_named(recipe_file: Path) -> None:
    with pytest.raises(PecftError, match="'hellaswagg' is not an lm-evaluation-harness task"):
        run(load_recipe(recipe_file, ["evaluation.harness=[hellaswagg]"]))
