"""How a row's values become prompt and target text: text as it is, numbers by one rule, nothing
else, so no Python repr of a list, dict, None or bool reaches what the model reads; a dotted
placeholder picks inside a field; a row too long for max_length is never tokenized."""

import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import invoke, write_jsonl

from pecft_cli.data import tasks
from pecft_cli.data.render import as_text, render_task
from pecft_cli.errors import PecftError
from pecft_cli.model.load import load_tokenizer
from pecft_cli.recipe.load import load_recipe


@pytest.mark.parametrize(
    ("value", "text"),
    [("FRA", "FRA"), (7, "7"), (-12, "-12"), (2.5, "2.5"), (3.0, "3.0"), (1e-05, "1e-05")],
)
def test_text_and_numbers_become_text_by_one_rule(value: Any, text: str) -> None:
    assert as_text(value, "w", "target", "code") == text


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (["FRA"], "holds a list (['FRA']), not text or a number; pick one item with {code.0}"),
        ({"iso": "FRA"}, "holds an object ({'iso': 'FRA'}), not text or a number; pick one key"),
        (True, "holds a boolean (True)"),
        (float("nan"), "holds a number that is not finite (nan)"),
        (float("inf"), "holds a number that is not finite (inf)"),
    ],
)
def test_every_other_value_is_refused_by_task_file_row_and_field(
    recipe_file: Path, value: Any, kind: str
) -> None:
    rows = [{"country": "France", "code": "FRA"}, {"country": "Japan", "code": value}]
    write_jsonl(recipe_file.parent / "data/codes/train.jsonl", rows)
    with pytest.raises(PecftError) as caught:
        render_task(load_recipe(recipe_file).tasks[0])
    message = str(caught.value)
    assert message.startswith("tasks 'codes' train (") and "train.jsonl), row 2" in message
    assert f"the target template's field 'code' {kind}" in message


@pytest.mark.parametrize("value", [b"FRA", datetime.date(2024, 1, 1), None])
def test_values_a_parquet_or_saved_dataset_can_hold_are_refused_too(value: Any) -> None:
    with pytest.raises(PecftError, match="field 'code' holds (a value of type|null)"):
        as_text(value, "w", "target", "code")


def test_null_is_a_missing_field_and_no_repr_reaches_a_prompt(recipe_file: Path) -> None:
    path = recipe_file.parent / "data/codes/train.jsonl"
    write_jsonl(path, [{"country": None, "code": "FRA"}])
    with pytest.raises(PecftError, match="names the field 'country', which this row lacks or"):
        render_task(load_recipe(recipe_file).tasks[0])
    for value in (["France"], {"name": "France"}, None, False, True):
        write_jsonl(path, [{"country": value, "code": "FRA"}])
        result = invoke("validate", recipe_file)
        assert result.exit_code == 2, result.output
        assert "row 1" in result.output and "'country'" in result.output
        assert "Country: [" not in result.output and "Country: {" not in result.output


def squad_like(folder: Path) -> Path:
    """A `save_to_disk` QA dataset laid out as SQuAD is: answers as an object of lists."""
    from datasets import Dataset, DatasetDict

    def rows(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [
            {"question": q, "answers": {"text": [a, a.lower()], "answer_start": [0, 0]}}
            for q, a in pairs
        ]

    pairs = [("Capital of France?", "Paris"), ("Capital of Japan?", "Tokyo")]
    DatasetDict(
        {"train": Dataset.from_list(rows(pairs * 2)), "validation": Dataset.from_list(rows(pairs))}
    ).save_to_disk(str(folder))
    return folder


def test_a_dotted_target_picks_the_answer_of_a_saved_qa_dataset(recipe_file: Path) -> None:
    saved = squad_like(recipe_file.parent / "qa")
    task = [
        f"tasks.0.source={saved}",
        "tasks.0.train=train",
        "tasks.0.eval=validation",
        "tasks.0.prompt=Q: {question} A: ",
        "tasks.0.target=answers.text.0",
    ]
    recipe = load_recipe(recipe_file, task)
    data = tasks.load_task(recipe.tasks[0], recipe, load_tokenizer(recipe.model))
    assert [e.target for e in data.train] == [" Paris", " Tokyo"] * 2
    assert [e.target for e in data.eval] == [" Paris", " Tokyo"]
    result = invoke("validate", recipe_file, *[a for o in task for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert "target: ' Paris" in result.output
    whole = [*task[:-1], "tasks.0.target=answers"]
    refused = invoke("validate", recipe_file, *[a for o in whole for a in ("--set", o)])
    assert refused.exit_code == 2
    assert "field 'answers' holds an object" in " ".join(refused.output.split())


def test_a_row_too_long_for_max_length_is_counted_and_never_tokenized(
    recipe_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = recipe_file.parent / "data/codes/train.jsonl"
    rows = [{"country": c, "code": "FRA"} for c in ("France", "x" * 2_000_000, "Spain")]
    write_jsonl(path, rows)
    recipe = load_recipe(recipe_file)
    tokenizer = load_tokenizer(recipe.model)
    seen: list[int] = []
    encode = tasks.encode
    monkeypatch.setattr(
        tasks, "encode", lambda t, text, s: seen.append(len(text)) or encode(t, text, s)
    )
    data = tasks.load_task(recipe.tasks[0], recipe, tokenizer)
    assert (data.train_rows, data.too_long, len(data.train)) == (3, 1, 2)
    bound = recipe.training.max_length * tasks.token_characters(tokenizer)
    assert max(seen) <= bound < 2_000_000
