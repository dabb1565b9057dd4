"""The field's benchmarks as recipes (recipes/benchmarks/): each validates, in every one of its
orders, against `save_to_disk` stand-ins with the hub datasets' splits, columns and features, so
a recipe that names a missing column, split or class fails here and not on a cluster."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import invoke

ROOT = Path(__file__).resolve().parent.parent.parent
BENCHMARKS = ROOT / "recipes" / "benchmarks"
TEXT, INT = "string", "int32"

# (hub id, config) -> splits, and the columns with their features: a list is a ClassLabel's
# names in order, a string a plain value type (as the dataset cards give them).
HUB: dict[tuple[str, str | None], tuple[list[str], dict[str, object]]] = {
    ("fancyzhx/dbpedia_14", None): (
        ["train", "test"],
        {
            "label": [
                *("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder"),
                *("MeanOfTransportation", "Building", "NaturalPlace", "Village", "Animal"),
                *("Plant", "Album", "Film", "WrittenWork"),
            ],
            "title": TEXT,
            "content": TEXT,
        },
    ),
    ("SetFit/amazon_reviews_multi_en", None): (
        ["train", "validation", "test"],
        {"id": TEXT, "text": TEXT, "label": "int64", "label_text": TEXT},
    ),
    ("community-datasets/yahoo_answers_topics", None): (
        ["train", "test"],
        {
            "id": INT,
            "topic": [
                *("Society & Culture", "Science & Mathematics", "Health"),
                *("Education & Reference", "Computers & Internet", "Sports"),
                *("Business & Finance", "Entertainment & Music", "Family & Relationships"),
                "Politics & Government",
            ],
            "question_title": TEXT,
            "question_content": TEXT,
            "best_answer": TEXT,
        },
    ),
    ("fancyzhx/ag_news", None): (
        ["train", "test"],
        {"text": TEXT, "label": ["World", "Sports", "Business", "Sci/Tech"]},
    ),
    ("Yelp/yelp_review_full", None): (
        ["train", "test"],
        {"label": ["1 star", "2 star", "3 stars", "4 stars", "5 stars"], "text": TEXT},
    ),
    ("nyu-mll/glue", "mnli"): (
        [
            *("train", "validation_matched", "validation_mismatched"),
            *("test_matched", "test_mismatched"),
        ],
        {
            "premise": TEXT,
            "hypothesis": TEXT,
            "label": ["entailment", "neutral", "contradiction"],
            "idx": INT,
        },
    ),
    ("nyu-mll/glue", "qqp"): (
        ["train", "validation", "test"],
        {
            "question1": TEXT,
            "question2": TEXT,
            "label": ["not_duplicate", "duplicate"],
            "idx": INT,
        },
    ),
    ("nyu-mll/glue", "rte"): (
        ["train", "validation", "test"],
        {
            "sentence1": TEXT,
            "sentence2": TEXT,
            "label": ["entailment", "not_entailment"],
            "idx": INT,
        },
    ),
    ("nyu-mll/glue", "sst2"): (
        ["train", "validation", "test"],
        {"sentence": TEXT, "label": ["negative", "positive"], "idx": INT},
    ),
    ("stanfordnlp/imdb", "plain_text"): (
        ["train", "test", "unsupervised"],
        {"text": TEXT, "label": ["neg", "pos"]},
    ),
    ("aps/super_glue", "cb"): (
        ["train", "validation", "test"],
        {
            "premise": TEXT,
            "hypothesis": TEXT,
            "idx": INT,
            "label": ["entailment", "contradiction", "neutral"],
        },
    ),
    ("aps/super_glue", "copa"): (
        ["train", "validation", "test"],
        {
            "premise": TEXT,
            "choice1": TEXT,
            "choice2": TEXT,
            "question": TEXT,
            "idx": INT,
            "label": ["choice1", "choice2"],
        },
    ),
    ("aps/super_glue", "boolq"): (
        ["train", "validation", "test"],
        {"question": TEXT, "passage": TEXT, "idx": INT, "label": ["False", "True"]},
    ),
    ("aps/super_glue", "multirc"): (
        ["train", "validation", "test"],
        {
            "paragraph": TEXT,
            "question": TEXT,
            "answer": TEXT,
            "idx": {"paragraph": INT, "question": INT, "answer": INT},
            "label": ["False", "True"],
        },
    ),
    ("aps/super_glue", "wic"): (
        ["train", "validation", "test"],
        {
            "word": TEXT,
            "sentence1": TEXT,
            "sentence2": TEXT,
            **dict.fromkeys(["start1", "start2", "end1", "end2", "idx"], INT),
            "label": ["False", "True"],
        },
    ),
}


def feature(spec: object) -> object:
    from datasets import ClassLabel, Value

    if isinstance(spec, list):
        return ClassLabel(names=spec)
    if isinstance(spec, dict):
        return {key: feature(value) for key, value in spec.items()}
    return Value(spec)


def value(spec: object, row: int) -> object:
    """A stand-in cell: a short text, a number, or (for a ClassLabel) the row's class."""
    if isinstance(spec, list):
        return row % len(spec)
    if isinstance(spec, dict):
        return {key: value(inner, row) for key, inner in spec.items()}
    if spec == TEXT:
        return f"words of row {row}"
    return row % 5  # amazon's star label (0-4) is a plain integer column


def stand_in(folder: Path, splits: list[str], columns: dict[str, object]) -> Path:
    """A DatasetDict with two rows of every class in every split, saved to disk."""
    from datasets import Dataset, DatasetDict, Features

    features = Features({name: feature(spec) for name, spec in columns.items()})
    classes = max([len(s) for s in columns.values() if isinstance(s, list)] or [5])
    rows = [{name: value(spec, i) for name, spec in columns.items()} for i in range(2 * classes)]
    data = {s: Dataset.from_list(rows, features=features) for s in splits}
    DatasetDict(data).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None], Path]:
    root = tmp_path_factory.mktemp("hub")
    return {
        key: stand_in(root / key[0].replace("/", "--") / str(key[1]), *spec)
        for key, spec in HUB.items()
    }


def offline_copy(name: str, folder: Path, model: Path, hub: dict) -> Path:
    """The benchmark recipe with every hub source pointed at its stand-in, on the tiny model."""
    recipe = yaml.safe_load((BENCHMARKS / name).read_text(encoding="utf-8"))
    recipe["model"] = {"path": str(model)}
    for task in recipe["tasks"]:
        task["source"] = str(hub[(task["source"], task.get("config"))])
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "orders", "words"),
    [
        ("olora-standard.yaml", ["1", "2", "3"], ["Educational Institution", "very negative"]),
        ("olora-long.yaml", ["4", "5", "6"], ["contradiction", "Good", "A"]),
    ],
)
def test_the_olora_benchmarks_validate_in_every_order(
    name: str, orders: list[str], words: list[str], tmp_path: Path, tiny_model: Path, hub: dict
) -> None:
    recipe = offline_copy(name, tmp_path, tiny_model, hub)
    listed = yaml.safe_load(recipe.read_text())["orders"]
    assert sorted(listed) == orders
    for order in orders:
        result = invoke("validate", recipe, "--set", f"order={order}")
        assert result.exit_code == 0, result.output
        shown = [line.split()[1] for line in result.output.splitlines() if ". " in line[:4]]
        assert shown == listed[order]
        for word in words:  # class names became the reference's answer words
            assert word in result.output


def test_trace_validates_against_its_local_layout(tmp_path: Path, tiny_model: Path) -> None:
    recipe = yaml.safe_load((BENCHMARKS / "trace.yaml").read_text(encoding="utf-8"))
    recipe["model"] = {"path": str(tiny_model)}
    recipe["training"]["max_length"] = 1024  # the tiny model's context; Llama-2 has 4,096
    names = [task["name"] for task in recipe["tasks"]]
    assert names[0] == "C-STANCE" and names[-1] == "20Minuten" and len(names) == 8
    for task in recipe["tasks"]:
        for split in ("train", "eval"):
            path = tmp_path / task[split]
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"prompt": f"{task['name']} question {i}\n", "answer": "B"} for i in range(3)]
            path.write_text(json.dumps(rows), encoding="utf-8")
    path = tmp_path / "trace.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "metric rouge_l" in result.output and "metric exact_match" in result.output
