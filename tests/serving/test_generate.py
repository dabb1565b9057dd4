"""`pecft generate` on a tiny trained run: the evaluation's own answers, from every source."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, write_jsonl, write_recipe

from pecft_cli.merging.merge import merge_adapters
from pecft_cli.merging.request import MergeOptions
from pecft_cli.recipe.load import load_recipe
from pecft_cli.serving.generate import GenerateOptions, generate
from pecft_cli.training.loop import run

ROWS = [{"country": "France"}, {"country": "Japan"}, {"country": "Spain"}, {"country": "Peru"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    run(load_recipe(write_recipe(folder, tiny_model)))
    return folder / "run"


def evaluated(run_dir: Path, stage: str) -> list[str]:
    """The answers the evaluation recorded for the codes task at `stage`."""
    lines = (run_dir / f"eval/predictions/{stage}/codes.jsonl").read_text().splitlines()
    return [json.loads(line)["prediction"] for line in lines]


def answers(source: Path, *args: str) -> list[str]:
    result = invoke("generate", source, *args, "--json")
    assert result.exit_code == 0, result.output
    return [row["answer"] for row in json.loads(result.stdout)]


def test_a_run_answers_as_its_evaluation_did(trained: Path) -> None:
    rows = [json.dumps(row) for row in ROWS]
    assert any(evaluated(trained, "yesno")), "empty answers would make the comparison hollow"
    assert answers(trained, "--task", "codes", *rows) == evaluated(trained, "yesno")
    assert answers(trained, "--task", "codes", "--stage", "1", *rows) == evaluated(trained, "codes")
    assert answers(trained, "--task", "codes", "--stage", "base", *rows) == evaluated(
        trained, "base"
    )


def test_one_field_templates_take_plain_text_and_files_take_rows(
    trained: Path, tmp_path: Path
) -> None:
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    from_file = answers(trained, "--task", "codes", "--file", rows)
    assert from_file == evaluated(trained, "yesno")
    plain = answers(trained, "--task", "codes", *(row["country"] for row in ROWS))
    assert plain == from_file


def test_merged_and_adapter_folders_answer_like_the_run(trained: Path, tmp_path: Path) -> None:
    merge_adapters(
        [trained / "adapters/02-yesno"], tmp_path / "model", MergeOptions(into_base=True)
    )
    expected = evaluated(trained, "yesno")
    rows = [json.dumps(row) for row in ROWS]
    assert answers(tmp_path / "model", "--task", "codes", *rows) == expected
    assert answers(trained / "adapters/02-yesno", "--task", "codes", *rows) == expected


def test_free_prompts_print_one_line_each(trained: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Country: France Code:\n\nCountry: Japan Code:\n", encoding="utf-8")
    result = invoke("generate", trained, "--file", prompts, "--max-new-tokens", "3")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    via_api = generate(trained, ["Country: France Code:"], GenerateOptions(max_new_tokens=3))
    assert via_api[0].prompt == "Country: France Code:"
    assert result.stdout.splitlines()[0] == via_api[0].answer.replace("\n", "\\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "codez", "x"], "did you mean 'codes'"),
        (["--task", "codes", "{not json"], "does not parse"),
        (["--stage", "9", "x"], "no stage '9'"),
        (["--max-new-tokens", "0", "x"], "positive number of tokens"),
        (["--file", "missing.txt"], "no such file"),
        ([], "no prompts given"),
        (["--task", "codes", "--chat", "France"], "drop --chat"),
    ],
)
def test_bad_input_exits_2(trained: Path, args: list[str], message: str) -> None:
    result = invoke("generate", trained, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_template_with_several_fields_needs_json(tmp_path: Path, tiny_model: Path) -> None:
    path = write_recipe(tmp_path, tiny_model)
    run(load_recipe(path, ["tasks.0.prompt=Country: {country} ({code}) Code: "]))
    result = invoke("generate", tmp_path / "run", "--task", "codes", "France")
    assert result.exit_code == 2
    assert "has the fields country, code" in " ".join(result.output.split())


def test_task_needs_a_run(trained: Path, tmp_path: Path) -> None:
    lonely = Path(shutil.copytree(trained / "adapters/01-codes", tmp_path / "adapter"))
    result = invoke("generate", lonely, "--task", "codes", "France")
    assert result.exit_code == 2
    assert "does not come from a pecft run" in " ".join(result.output.split())
