from pathlib import Path

import pytest
import yaml

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import dump_recipe, load_recipe
from pecft_cli.recipe.schema import output_dir


def edit(path: Path, change) -> Path:
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(PecftError) as caught:
        load_recipe(path, overrides)
    return str(caught.value)


def test_loads_with_defaults_and_absolute_data_paths(recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)
    assert recipe.strategy.name == "seq"
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.tasks[0].train == str(recipe_file.parent / "data/codes/train.jsonl")
    assert recipe.task_metric(recipe.tasks[0]) == "exact_match"
    assert recipe.task_metric(recipe.tasks[1]) == "choice"
    assert recipe.tasks[0].target_template() == "{code}"


def test_unknown_key_suggests_the_close_one(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r["tasks"][1].update(promt="x"))
    message = error_of(recipe_file)
    assert str(recipe_file) in message
    assert "tasks[1].promt: unknown key; did you mean 'prompt'?" in message
    assert "Valid keys here:" in message and "choices" in message


def test_unknown_top_level_key(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(trainig={"lr": 1}))
    assert "trainig: unknown key; did you mean 'training'?" in error_of(recipe_file)


def test_wrong_type_names_key_and_value(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r["training"].update(batch_size="many"))
    message = error_of(recipe_file)
    assert "training.batch_size" in message and "'many'" in message


@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(recipe_file: Path, value: int) -> None:
    edit(recipe_file, lambda r: r["lora"].update(r=value))
    assert "lora.r: Input should be greater than 0" in error_of(recipe_file)


def test_duplicate_task_names_refused(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r["tasks"][1].update(name="codes"))
    assert "'codes' appears twice" in error_of(recipe_file)


def test_empty_task_list_refused(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(tasks=[]))
    assert "tasks:" in error_of(recipe_file)


def test_template_with_brackets_refused(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r["tasks"][0].update(prompt="{country[0]}"))
    assert "indexes with brackets" in error_of(recipe_file)


def test_unknown_strategy_suggests(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(strategy={"name": "sqe"}))
    assert "unknown strategy 'sqe'; did you mean 'seq'?" in error_of(recipe_file)


def test_strategy_options_checked_by_the_strategy(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(strategy={"name": "seq", "options": {"buffer": 3}}))
    assert "strategy.options.buffer: unknown option" in error_of(recipe_file)


def test_malformed_yaml_names_line(recipe_file: Path) -> None:
    recipe_file.write_text("name: x\ntasks: [\n  - oops: : :\n")
    message = error_of(recipe_file)
    assert "not valid YAML at line" in message


def test_overrides_are_typed_by_the_schema(recipe_file: Path) -> None:
    recipe = load_recipe(
        recipe_file,
        [
            "training.lr=1e-4",
            "lora.target_modules=[q_proj,k_proj]",
            "tasks.yesno.training.epochs=2",
            "tasks.0.prompt=123",
            "model.quantization=4bit",
            "name=007",
        ],
    )
    assert recipe.training.lr == pytest.approx(1e-4)
    assert recipe.lora.target_modules == ["q_proj", "k_proj"]
    assert recipe.task_training(recipe.tasks[1]).epochs == 2
    assert recipe.task_training(recipe.tasks[0]).epochs == 1
    assert recipe.tasks[0].prompt == "123"
    assert recipe.model.quantization.mode == "4bit"
    assert recipe.name == "007"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("traning.lr=1", "unknown key 'traning'; did you mean 'training'?"),
        ("training.lr", "write an override as dotted.key=value"),
        ("tasks.9.prompt=x", "index 9 is out of range (0..1)"),
        ("tasks.codez.prompt=x", "no item named 'codez'; did you mean 'codes'?"),
        ("training.lr=fast", "training.lr"),
        ("training.lr.x=1", "holds a value"),
    ],
)
def test_bad_overrides(recipe_file: Path, override: str, expected: str) -> None:
    assert expected in error_of(recipe_file, [override])


def test_dumped_recipe_loads_back_identically(recipe_file: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file)
    copy = tmp_path / "elsewhere" / "recipe.yaml"
    copy.parent.mkdir()
    copy.write_text(dump_recipe(recipe))
    again = load_recipe(copy)
    from pecft_cli import __version__

    written = {"output_dir": str(output_dir(recipe)), "pecft_version": __version__}
    assert again.model_dump() == recipe.model_dump() | written


def test_missing_recipe_file(tmp_path: Path) -> None:
    assert "no such recipe file" in error_of(tmp_path / "nope.yaml")


def test_a_recipe_from_a_newer_pecft_says_so(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(pecft_version="9.0", future_key=1))
    message = error_of(recipe_file)
    assert "written by pecft 9.0, newer than this pecft" in message
    assert "future_key: unknown key" in message


def test_the_written_recipe_records_its_pecft_version(recipe_file: Path) -> None:
    from pecft_cli import __version__

    assert yaml.safe_load(dump_recipe(load_recipe(recipe_file)))["pecft_version"] == __version__


def test_a_named_order_reorders_the_tasks(recipe_file: Path) -> None:
    def ordered(r: dict) -> None:
        r.update(orders={"1": ["codes", "yesno"], "2": ["yesno", "codes"]}, order="2")

    edit(recipe_file, ordered)
    recipe = load_recipe(recipe_file)
    assert [task.name for task in recipe.tasks] == ["yesno", "codes"]
    again = recipe_file.parent / "again.yaml"
    again.write_text(dump_recipe(recipe))
    assert [task.name for task in load_recipe(again).tasks] == ["yesno", "codes"]
    assert [t.name for t in load_recipe(recipe_file, ["order=1"]).tasks] == ["codes", "yesno"]


def test_a_wrong_order_is_refused(recipe_file: Path) -> None:
    edit(recipe_file, lambda r: r.update(orders={"first": ["codes", "yesno"]}, order="frist"))
    assert "order: 'frist' is not a named order; did you mean 'first'?" in error_of(recipe_file)
    edit(recipe_file, lambda r: r.update(orders={"1": ["codes"]}, order=None))
    assert "orders.1: it does not list every task exactly once" in error_of(recipe_file)
    edit(recipe_file, lambda r: r.update(orders={"1": ["codes", "yesno", "cdoes"]}))
    assert "orders.1: 'cdoes' is not a task" in error_of(recipe_file)
