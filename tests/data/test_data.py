import json
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoTokenizer

from pecft_cli.data.batch import IGNORE_INDEX, pack, pad, training_features
from pecft_cli.data.read import read_local
from pecft_cli.data.tasks import load_task
from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe

ROWS = [{"q": "Is ice cold?", "a": "yes"}, {"q": "Is fire cold?", "a": "no"}]


@pytest.fixture
def tokenizer(tiny_model: Path):
    from pecft_cli.model.load import load_tokenizer
    from pecft_cli.recipe.sections import ModelSection

    return load_tokenizer(ModelSection(path=str(tiny_model)))


def test_reads_every_local_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text("q,a\nIs ice cold?,yes\nIs fire cold?,no\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "saved"):
        assert read_local(tmp_path / name, "t") == ROWS, name


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", '{"q": "x"}\n{"q": \n', "bad.jsonl, line 2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1: each line must be a JSON object"),
        ("ragged.csv", "q,a\nx,y\nx,y,z\n", "ragged.csv, line 3: the row has a different number"),
        ("data.txt", "x", "unknown extension '.txt'"),
        ("obj.json", '{"q": 1}', "must hold a list of objects"),
    ],
)
def test_broken_files_name_file_and_line(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(PecftError) as caught:
        read_local(tmp_path / name, "t")
    assert expected in str(caught.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "latin.jsonl").write_bytes('{"q": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(PecftError, match="latin.jsonl, line 1: not UTF-8 text"):
        read_local(tmp_path / "latin.jsonl", "t")


def test_prompt_tokens_are_masked_and_space_moves_to_target(recipe_file: Path, tokenizer) -> None:
    recipe = load_recipe(recipe_file)
    task = load_task(recipe.tasks[0], recipe, tokenizer)
    first = task.train[0]
    assert first.prompt == "Country: France Code:"
    assert first.target == " FRA"
    assert first.target_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first.target_ids[:-1]) == " FRA"
    features = training_features(first)
    assert features["labels"][: len(first.prompt_ids)] == [IGNORE_INDEX] * len(first.prompt_ids)
    assert features["labels"][len(first.prompt_ids) :] == first.target_ids


def test_choices_are_labelled(recipe_file: Path, tokenizer) -> None:
    recipe = load_recipe(recipe_file)
    task = load_task(recipe.tasks[1], recipe, tokenizer)
    assert task.metric == "choice"
    # the choices keep their own text (acc_norm divides by its length); the tokens carry the
    # space that the prompt gave up
    assert task.eval[1].choices == ["yes", "no"]
    assert [tokenizer.decode(ids) for ids in task.eval[1].choice_ids] == [" yes", " no"]
    assert task.eval[1].label == 1


def test_target_outside_choices_names_row(recipe_file: Path, tokenizer) -> None:
    write_jsonl(recipe_file.parent / "data/yesno/eval.jsonl", ROWS + [{"q": "Hm?", "a": "maybe"}])
    recipe = load_recipe(recipe_file)
    with pytest.raises(PecftError) as caught:
        load_task(recipe.tasks[1], recipe, tokenizer)
    assert "eval" in str(caught.value) and "row 3" in str(caught.value)
    assert "'maybe' is not one of the choices (yes, no)" in str(caught.value)


def test_missing_field_suggests(recipe_file: Path, tokenizer) -> None:
    recipe = load_recipe(recipe_file, ["tasks.0.prompt=Land: {countri}"])
    with pytest.raises(PecftError) as caught:
        load_task(recipe.tasks[0], recipe, tokenizer)
    assert "row 1" in str(caught.value) and "did you mean 'country'?" in str(caught.value)


def test_empty_target_and_empty_file(recipe_file: Path, tokenizer) -> None:
    write_jsonl(recipe_file.parent / "data/codes/eval.jsonl", [{"country": "X", "code": " "}])
    recipe = load_recipe(recipe_file)
    with pytest.raises(PecftError, match="row 1: the target is empty"):
        load_task(recipe.tasks[0], recipe, tokenizer)
    (recipe_file.parent / "data/codes/eval.jsonl").write_text("")
    with pytest.raises(PecftError, match="holds no rows"):
        load_task(recipe.tasks[0], recipe, tokenizer)


def test_long_examples_are_skipped_and_counted(recipe_file: Path, tokenizer) -> None:
    recipe = load_recipe(recipe_file, ["tasks.0.training.max_length=8"])
    task = load_task(recipe.tasks[0], recipe, tokenizer)
    assert task.too_long > 0
    assert all(len(example) <= 8 for example in task.train)
    assert task.too_long + len(task.train) == task.train_rows


def test_chat_template_wraps_prompt(recipe_file: Path, tokenizer) -> None:
    recipe = load_recipe(recipe_file, ["tasks.0.chat=true", "tasks.0.system=Be brief."])
    example = load_task(recipe.tasks[0], recipe, tokenizer).train[0]
    assert example.prompt == "<system>Be brief.</s><user>Country: France Code: </s><assistant>"
    assert example.target == "FRA"


def test_pack_puts_a_batch_in_one_row_with_restarting_positions() -> None:
    batch = pack(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # position 2 (the first sequence's last) must not predict the second sequence's first token
    assert batch["predict"].tolist() == [0, 1, 3]
    assert batch["targets"].tolist() == [6, 7, 9]


def test_pad_right_pads_and_indexes_the_flat_grid() -> None:
    batch = pad(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert batch["predict"].tolist() == [0, 1]
    assert batch["targets"].tolist() == [6, 7]


def test_tokenizer_without_pad_gets_eos(tokenizer, tiny_model: Path) -> None:
    assert AutoTokenizer.from_pretrained(tiny_model).pad_token is None
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def news_fixture(folder: Path) -> Path:
    """A saved DatasetDict shaped like ag_news: text and an integer ClassLabel column."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=["world", "sports", "business"])}
    )
    rows = [{"text": f"story {i}", "label": i % 3} for i in range(30)]
    splits = {name: Dataset.from_list(rows, features=features) for name in ("train", "test")}
    DatasetDict(splits).save_to_disk(str(folder / "news"))
    return folder / "news"


def news_recipe(recipe_file: Path, *more: str):
    news = news_fixture(recipe_file.parent)
    overrides = [
        f"tasks.1.source={news}",
        "tasks.1.train=train",
        "tasks.1.eval=test",
        "tasks.1.prompt=News: {text} Topic: ",
        "tasks.1.target=label",
        "tasks.1.choices=[world, sports, business]",
    ]
    return load_recipe(recipe_file, [*overrides, *more])


def test_a_class_label_target_yields_the_class_name(recipe_file: Path, tokenizer) -> None:
    recipe = news_recipe(recipe_file)
    data = load_task(recipe.tasks[1], recipe, tokenizer)
    assert [e.target.strip() for e in data.eval[:4]] == ["world", "sports", "business", "world"]
    assert data.eval[1].label == 1


def test_per_class_sampling_is_seeded_and_balanced(recipe_file: Path, tokenizer) -> None:
    def sampled(*more: str) -> list[str]:
        recipe = news_recipe(recipe_file, *more)
        return [e.prompt for e in load_task(recipe.tasks[1], recipe, tokenizer).train]

    four = sampled("tasks.1.per_class=4")
    assert len(four) == 12
    assert sampled("tasks.1.per_class=4") == four
    assert sampled("tasks.1.per_class={train: 4, seed: 1}") != four
    recipe = news_recipe(recipe_file, "tasks.1.per_class={train: 2, eval: 1}")
    data = load_task(recipe.tasks[1], recipe, tokenizer)
    assert (
        sorted(e.target.strip() for e in data.train)
        == ["business"] * 2 + ["sports"] * 2 + ["world"] * 2
    )
    assert len(data.eval) == 3


def test_per_class_on_a_column_that_is_not_a_class_is_refused(recipe_file: Path, tokenizer) -> None:
    recipe = news_recipe(
        recipe_file, "tasks.1.target=text", "tasks.1.choices=null", "tasks.1.per_class=2"
    )
    with pytest.raises(PecftError) as caught:
        load_task(recipe.tasks[1], recipe, tokenizer)
    message = str(caught.value)
    assert "target field 'text' is not a class column" in message and "label" in message
    with pytest.raises(PecftError, match="names 2; give a target of one field"):
        news_recipe(recipe_file, "tasks.1.target={text} {label}", "tasks.1.per_class=2")


def test_labels_give_each_class_the_words_the_target_says(recipe_file: Path, tokenizer) -> None:
    words = "tasks.1.labels={world: World news, sports: Sport, business: Money}"
    choices = "tasks.1.choices=[World news, Sport, Money]"
    recipe = news_recipe(recipe_file, words, choices, "tasks.1.per_class={train: 2}")
    data = load_task(recipe.tasks[1], recipe, tokenizer)
    assert [e.target.strip() for e in data.eval[:3]] == ["World news", "Sport", "Money"]
    assert (
        sorted(e.target.strip() for e in data.train)
        == ["Money"] * 2 + ["Sport"] * 2 + ["World news"] * 2
    )
    recipe = news_recipe(recipe_file, "tasks.1.labels={world: World, sprots: Sport}")
    with pytest.raises(PecftError) as caught:
        load_task(recipe.tasks[1], recipe, tokenizer)
    message = str(caught.value)
    assert "row 2 has label 'sports', which labels does not map" in message
    assert "did you mean 'sprots'?" in message


def test_labels_declare_the_classes_of_a_plain_column(recipe_file: Path, tokenizer) -> None:
    # per_class on a column that is not a ClassLabel samples by it once labels name its classes
    labels = "tasks.1.labels={'story 0': a, 'story 1': b, 'story 2': c}"
    recipe = news_recipe(
        recipe_file, "tasks.1.target=text", "tasks.1.choices=null", "tasks.1.per_class=1", labels
    )
    with pytest.raises(PecftError, match="row 4 has text 'story 3', which labels"):
        load_task(recipe.tasks[1], recipe, tokenizer)
