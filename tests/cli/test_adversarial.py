"""Bad input across the commands: each case exits 2 with one paragraph naming what is wrong and
where, no traceback, and leaves everything already on disk as it was."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import invoke, snapshot, write_jsonl

from pecft_cli.recipe.load import load_recipe
from pecft_cli.training.loop import run

Setup = Callable[[Path], list]  # prepares the case under a folder, returns the command line


def recipe_case(*overrides: str) -> Setup:
    return lambda folder: [
        "train",
        folder / "recipe.yaml",
        *[a for o in overrides for a in ("--set", o)],
    ]


def rewrite(relative: str, content: bytes | str, *args: str) -> Setup:
    def setup(folder: Path) -> list:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return ["train", folder / "recipe.yaml", *args]

    return setup


def rows(relative: str, data: list[dict]) -> Setup:
    def setup(folder: Path) -> list:
        write_jsonl(folder / relative, data)
        return ["train", folder / "recipe.yaml"]

    return setup


def not_a_causal_lm(folder: Path) -> list:
    from transformers import ViTConfig

    model = folder / "vit"
    model.mkdir()
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(load_recipe(folder / "recipe.yaml").model.path) / name, model / name)
    return ["train", folder / "recipe.yaml", "--set", f"model.path={model}"]


def newer_recipe(folder: Path) -> list:
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe.update(pecft_version="99.0", future={"key": 1})
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return ["train", folder / "recipe.yaml"]


def occupied_output(folder: Path) -> list:
    (folder / "run").mkdir()
    (folder / "run" / "notes.txt").write_text("mine")
    return ["train", folder / "recipe.yaml"]


def output_is_a_file(folder: Path) -> list:
    (folder / "run").write_text("a file")
    return ["train", folder / "recipe.yaml"]


def data_path(make: Callable[[Path], Path], task: str = "tasks.0.train") -> Setup:
    """A data path made by `make` (a FIFO, a link loop...) given to the first task."""
    return lambda folder: ["train", folder / "recipe.yaml", "--set", f"{task}={make(folder)}"]


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.jsonl")
    return folder / "pipe.jsonl"


def link_loop(folder: Path) -> Path:
    (folder / "a.jsonl").symlink_to(folder / "b.jsonl")
    (folder / "b.jsonl").symlink_to(folder / "a.jsonl")
    return folder / "a.jsonl"


def dangling_link(folder: Path) -> Path:
    (folder / "a.jsonl").symlink_to(folder / "moved.jsonl")
    return folder / "a.jsonl"


def source_is_a_fifo(folder: Path) -> list:
    splits = ["--set", "tasks.0.train=train", "--set", "tasks.0.eval=test"]
    return data_path(fifo, "tasks.0.source")(folder) + splits


def saved_without_the_split(folder: Path) -> list:
    from datasets import Dataset, DatasetDict

    rows = [{"country": c, "code": k} for c, k in (("France", "FRA"), ("Japan", "JPN"))]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder / "saved"))
    splits = ["--set", "tasks.0.train=train", "--set", "tasks.0.eval=validation"]
    return ["train", folder / "recipe.yaml", "--set", f"tasks.0.source={folder / 'saved'}", *splits]


def saved_with_a_huge_cell(folder: Path) -> list:
    from datasets import Dataset, DatasetDict

    rows = [{"country": "France", "code": "FRA"}, {"country": "x" * 70_000_000, "code": "XXX"}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(folder / "saved"))
    splits = ["--set", "tasks.0.train=train", "--set", "tasks.0.eval=train"]
    return ["train", folder / "recipe.yaml", "--set", f"tasks.0.source={folder / 'saved'}", *splits]


def parquet_with_a_huge_cell(folder: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"country": ["France", "x" * 70_000_000], "code": ["FRA", "XXX"]})
    pq.write_table(table, folder / "data/codes/train.parquet")
    return ["train", folder / "recipe.yaml", "--set", "tasks.0.train=data/codes/train.parquet"]


def answers(value: object, target: str) -> Setup:
    def setup(folder: Path) -> list:
        write_jsonl(folder / "data/codes/train.jsonl", [{"country": "France", "code": value}])
        return ["train", folder / "recipe.yaml", "--set", f"tasks.0.target={target}"]

    return setup


def one_row(relative: str, size: int, field: str = "country") -> Setup:
    """A data file whose only row holds a field of `size` characters, written when run."""

    def setup(folder: Path) -> list:
        (folder / relative).write_text(
            '{"' + field + '": "' + "x" * size + '", "code": "FRA", "q": "x", "a": "yes"}\n'
        )
        return ["train", folder / "recipe.yaml"]

    return setup


def csv_data(text: str) -> Setup:
    return lambda folder: (
        rewrite("data/codes/train.csv", text)(folder)
        + ["--set", "tasks.0.train=data/codes/train.csv"]
    )


def json_data(text: str) -> Setup:
    return lambda folder: (
        rewrite("data/codes/train.json", text)(folder)
        + ["--set", "tasks.0.train=data/codes/train.json"]
    )


ALIAS_BOMB = (
    "name: x\nmodel: x\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
    )
    + "tasks: [*g]\n"
)  # 12 lines that stand for 9**7 = 4.8 million strings
MESSAGE_LIMIT = 2500  # one paragraph, whatever the input


TRAIN_CASES: dict[str, tuple[Setup, str]] = {
    "malformed yaml": (rewrite("recipe.yaml", "name: [unclosed\n"), "not valid YAML at line"),
    "recipe not a mapping": (rewrite("recipe.yaml", "- a\n- b\n"), "a recipe is a YAML mapping"),
    "recipe not utf-8": (rewrite("recipe.yaml", b"name: \xff\xfe\n"), "not UTF-8"),
    "missing recipe": (lambda f: ["train", f / "nope.yaml"], "no such recipe file"),
    "wrong type": (recipe_case("training.batch_size=many"), "training.batch_size"),
    "zero size": (recipe_case("training.batch_size=0"), "greater than 0"),
    "negative lr": (recipe_case("training.lr=-0.1"), "training.lr"),
    "negative rank": (recipe_case("lora.r=-4"), "lora.r"),
    "dropout of one": (recipe_case("lora.dropout=1"), "lora.dropout"),
    "empty task list": (recipe_case("tasks=[]"), "tasks"),
    "duplicate task names": (recipe_case("tasks.1.name=codes"), "appears twice"),
    "unknown key": (recipe_case("training.epoch=2"), "did you mean 'epochs'"),
    "unknown strategy": (recipe_case("strategy.name=olra"), "did you mean 'olora'"),
    "replay fraction above one": (
        recipe_case("strategy.name=replay", "strategy.options.fraction=1.5"),
        "strategy.options.fraction",
    ),
    "missing lora target": (recipe_case("lora.target_modules=[q_prj]"), "no module 'q_prj'"),
    "missing data file": (recipe_case("tasks.0.train=nowhere.jsonl"), "does not exist"),
    "unknown data extension": (
        lambda f: rewrite("data.txt", "France FRA\n")(f) + ["--set", "tasks.0.train=data.txt"],
        "unknown extension",
    ),
    "empty eval data": (rewrite("data/codes/eval.jsonl", ""), "holds no rows"),
    "non-utf-8 data": (rewrite("data/codes/train.jsonl", b'{"country": "\xff"}\n'), "not UTF-8"),
    "broken json line": (
        rewrite("data/codes/train.jsonl", '{"country": "France", "code": "FRA"}\n{"country": \n'),
        "line 2",
    ),
    "ragged csv": (
        lambda f: (
            rewrite("data/codes/train.csv", "country,code\nFrance,FRA\nJapan\n")(f)
            + ["--set", "tasks.0.train=data/codes/train.csv"]
        ),
        "different number of fields",
    ),
    "row missing a field": (rows("data/codes/train.jsonl", [{"code": "FRA"}]), "'country'"),
    "empty target": (
        rows("data/codes/train.jsonl", [{"country": "France", "code": " "}]),
        "target is empty",
    ),
    "target outside the choices": (
        rows("data/yesno/train.jsonl", [{"q": "Is it?", "a": "perhaps"}]),
        "not one of the choices",
    ),
    "every example longer than max_length": (
        recipe_case("training.max_length=3"),
        "every example is longer than training.max_length",
    ),
    "template with attribute access": (
        recipe_case("tasks.0.prompt={country.__class__}"),
        "'country' holds text, which has no '__class__'",
    ),
    "yaml aliases that expand to millions": (
        rewrite("recipe.yaml", ALIAS_BOMB),
        "more than 100,000 values once its YAML aliases",
    ),
    "yaml nested past any recipe": (
        rewrite("recipe.yaml", "name: x\nmodel: " + "[" * 20000 + "]" * 20000 + "\n"),
        "nested too deeply",
    ),
    "recipe file of megabytes": (
        rewrite("recipe.yaml", "# padding\n" * 200_000),
        "too large for a recipe",
    ),
    "format spec in a template": (
        recipe_case("tasks.0.prompt={country:>999999999}"),
        "task 'codes', prompt template: placeholder '{country:>999999999}' has a format spec",
    ),
    "conversion in a template": (recipe_case("tasks.1.target={a!r}"), "has a conversion"),
    "empty placeholder": (recipe_case("tasks.0.prompt=Country {} Code:"), "'{}' is empty"),
    "stray brace in a template": (
        recipe_case("tasks.0.prompt=Country {country Code:"),
        "opens or closes no placeholder",
    ),
    "seed beyond every generator": (recipe_case("seed=4294967296"), "seed: Input should be less"),
    "infinite learning rate": (
        recipe_case("training.lr=.inf"),
        "training.lr: Input should be a finite",
    ),
    "nan alpha": (recipe_case("lora.alpha=.nan"), "lora.alpha: Input should be a finite"),
    "batch size beyond any count": (
        recipe_case("training.batch_size=100000000000000000000"),
        "training.batch_size: Input should be less than or equal to 2147483647",
    ),
    "value of 100,000 characters": (
        recipe_case("training.batch_size=" + "x" * 100_000),
        "training.batch_size",
    ),
    "key of 100,000 characters": (recipe_case("training." + "k" * 100_000 + "=1"), "unknown key"),
    "task name of 200 characters": (recipe_case("tasks.0.name=" + "t" * 200), "up to 100 letters"),
    "lora rank beyond the target layers": (
        recipe_case("lora.r=17"),
        "maps 32 to 16 features, so no update to it has a rank above 16",
    ),
    "max_length past the context": (
        recipe_case("tasks.1.training.max_length=5000"),
        "training.max_length: 5000 (task 'yesno') is past the model's context length of 1024",
    ),
    "answer past the context": (
        recipe_case("evaluation.max_new_tokens=1020"),
        "go past the model's context length of 1024",
    ),
    "data nested past any row": (
        rewrite("data/codes/train.jsonl", '{"country": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
        "JSON nested too deeply",
    ),
    "number of 5,000 digits in data": (
        rewrite("data/codes/train.jsonl", '{"country": 1' + "0" * 5000 + ', "code": "x"}\n'),
        "JSON that cannot be read",
    ),
    "row of 100,000 fields": (
        rows("data/codes/train.jsonl", [{f"k{i}": i for i in range(100_000)}]),
        "Fields present: k0, k1",
    ),
    "more processes than cores": (
        lambda f: ["train", f / "recipe.yaml", "--num-processes", "100000"],
        "use at most",
    ),
    "osf on a 4-bit base": (
        recipe_case("strategy.name=osf", "model.quantization=4bit"),
        "'osf' trains the base model's own weight matrices",
    ),
    "model folder missing": (recipe_case("model.path=/no/such/model"), "does not exist"),
    "model that is not a causal LM": (not_a_causal_lm, "not a causal language model"),
    "output folder of someone else": (occupied_output, "not a pecft run"),
    "output path is a file": (output_is_a_file, "is not a folder"),
    "recipe from a newer pecft": (newer_recipe, "newer than this pecft"),
    "data file that is a named pipe": (
        data_path(fifo),
        "pipe.jsonl is a named pipe (FIFO), not a data file or folder, so pecft did not open it",
    ),
    "data file that is a device": (
        data_path(lambda f: Path("/dev/zero")),
        "/dev/zero is a character device, not a data file or folder",
    ),
    "data file that is a loop of links": (data_path(link_loop), "is a loop of symbolic links"),
    "data file that is a dangling link": (
        data_path(dangling_link),
        "is a symbolic link to a path that does not exist",
    ),
    "source that is a named pipe": (source_is_a_fifo, "pipe.jsonl is a named pipe (FIFO)"),
    "saved dataset without the split": (saved_without_the_split, "holds the splits train;"),
    "parquet with a cell of 70 MB": (
        parquet_with_a_huge_cell,
        "train.parquet, row 2: the field 'country' holds 70,000,000 bytes, more than pecft",
    ),
    "saved dataset with a cell of 70 MB": (
        saved_with_a_huge_cell,
        "row 2: the field 'country' holds 70,000,000 bytes, more than pecft reads as one row",
    ),
    "list in a target field": (
        answers(["FRA"], "code"),
        "row 1: the target template's field 'code' holds a list (['FRA']), not text or a "
        "number; pick one item with {code.0}",
    ),
    "object in a target field": (answers({"iso": "FRA"}, "code"), "holds an object"),
    "null in a target field": (answers(None, "code"), "which this row lacks or leaves empty"),
    "boolean in a target field": (answers(True, "code"), "holds a boolean (True)"),
    "nan in a target field": (
        rewrite("data/codes/train.jsonl", '{"country": "France", "code": NaN}\n'),
        "holds a number that is not finite (nan)",
    ),
    "picking a key the object lacks": (
        answers({"text": ["FRA"]}, "code.txt.0"),
        "picks 'code.txt.0', but 'code' has no key 'txt'; its keys: text",
    ),
    "picking past the end of a list": (
        answers({"text": ["FRA"]}, "code.text.3"),
        "picks 'code.text.3', but 'code.text' holds 1 items",
    ),
    "csv naming a column twice": (
        csv_data("country,code,code\nFrance,FRA,FR\n"),
        "the header names the column 'code' more than once",
    ),
    "json list cut short": (
        json_data('[{"country": "France", "code": "FRA"},\n {"country": '),
        "train.json, line 2: not valid JSON",
    ),
    "only row of megabytes": (
        one_row("data/codes/train.jsonl", 5_000_000),
        "every example is longer than training.max_length",
    ),
    "eval prompt past any context": (
        one_row("data/codes/eval.jsonl", 3_000_000),
        "characters go past the model's context length of 1024 tokens however they are tokenized",
    ),
    "row past the bound of a row": (
        one_row("data/yesno/train.jsonl", 65 * 2**20, field="q"),
        "train.jsonl, line 1: the row is longer than 67,108,864 bytes",
    ),
    "last stage adapter only with a router": (
        recipe_case(
            "strategy.name=inclora", "strategy.routing=prototype", "output.stage_adapters=last"
        ),
        "output.stage_adapters: last keeps only the latest stage's adapter",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses(case: str, recipe_file: Path) -> None:
    folder = recipe_file.parent
    setup, message = TRAIN_CASES[case]
    command = setup(folder)
    before = snapshot(folder)
    result = invoke(*command)
    assert result.exit_code == 2, result.output[:MESSAGE_LIMIT]
    assert message in " ".join(result.output.split()), result.output[:MESSAGE_LIMIT]
    assert "Traceback" not in result.output
    assert len(result.output) < MESSAGE_LIMIT
    assert snapshot(folder) == before
    if (folder / "run").is_dir():
        assert (folder / "run" / "run.json").exists() is False


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    from conftest import write_recipe

    folder = tmp_path_factory.mktemp("trained")
    run(load_recipe(write_recipe(folder, tiny_model)))
    return folder / "run"


def corrupt(relative: str, content: bytes) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        (run_dir / relative).write_bytes(content)

    return damage


def newer_format(run_dir: Path) -> None:
    state = json.loads((run_dir / "run.json").read_text())
    state["format_version"] = 99
    (run_dir / "run.json").write_text(json.dumps(state))


def keep(run_dir: Path) -> None:
    """No damage: the command line itself is wrong."""


MERGE = ["merge-adapters", "{run}", "--out", "{run}/../m"]

RUN_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "eval: not a run folder": (
        lambda r: (r / "run.json").unlink(),
        ["eval", "{run}"],
        "not a pecft run folder",
    ),
    "eval: corrupted run.json": (
        corrupt("run.json", b"{half"),
        ["eval", "{run}"],
        "not a readable JSON",
    ),
    "eval: run from a newer pecft": (newer_format, ["eval", "{run}"], "run folder format 99"),
    "eval: truncated adapter": (
        corrupt("adapters/01-codes/adapter_model.safetensors", b"\x00" * 10),
        ["eval", "{run}"],
        "the adapter does not load",
    ),
    "eval: zero limit": (keep, ["eval", "{run}", "--limit", "0"], "positive number of examples"),
    "eval: unknown stage": (keep, ["eval", "{run}", "--stages", "9"], "no stage '9'"),
    "eval: misspelt task": (keep, ["eval", "{run}", "--tasks", "codez"], "did you mean 'codes'"),
    "eval: extra data without target": (
        lambda r: write_jsonl(r.parent / "extra.jsonl", [{"prompt": "x"}]),
        ["eval", "{run}", "--data", "{run}/../extra.jsonl"],
        "needs the fields prompt and target",
    ),
    "report: corrupted matrix": (
        corrupt("eval/matrix.csv", b"stage,codes\nbase,not-a-number\n"),
        ["report", "{run}"],
        "not a pecft matrix",
    ),
    "report: no matrix": (
        lambda r: (r / "eval/matrix.csv").unlink(),
        ["report", "{run}"],
        "has no eval/matrix.csv",
    ),
    "report: two formats": (keep, ["report", "{run}", "--json", "--csv"], "choose one"),
    "merge: not an adapter": (
        keep,
        ["merge-adapters", "{run}/eval", "--out", "{run}/../m"],
        "not an adapter folder",
    ),
    "generate: unknown task": (keep, ["generate", "{run}", "--task", "code", "x"], "did you mean"),
    "generate: answer past the context": (
        keep,
        ["generate", "{run}", "x", "--max-new-tokens", "100000000000"],
        "past the model's context length of 1024",
    ),
    "generate: zero batch": (keep, ["generate", "{run}", "x", "--batch-size", "0"], "positive"),
    "generate: empty stop string": (keep, ["generate", "{run}", "x", "--stop", ""], "cannot be"),
    "merge: rank beyond the adapters": (
        keep,
        [*MERGE, "--method", "svd", "--rank", "1000000000"],
        "rank at most 8",
    ),
    "merge: seed beyond every generator": (
        keep,
        [*MERGE, "--method", "dare_linear", "--density", "0.5", "--seed", "1" + "0" * 20],
        "give a seed from 0 to 4294967295",
    ),
    "merge: infinite weights": (
        keep,
        [*MERGE, "--weights", "nan,inf"],
        "every weight must be a finite number",
    ),
    "eval: extra data that is a named pipe": (
        lambda r: os.mkfifo(r.parent / "pipe.jsonl"),
        ["eval", "{run}", "--data", "{run}/../pipe.jsonl"],
        "pipe.jsonl is a named pipe (FIFO), not a data file or folder, so pecft did not open it",
    ),
    "generate: prompts from a named pipe": (
        lambda r: os.mkfifo(r.parent / "prompts.txt"),
        ["generate", "{run}", "--file", "{run}/../prompts.txt"],
        "prompts.txt is a named pipe (FIFO), not a file of prompts; pecft did not open it",
    ),
    "eval: extra data nested past any row": (
        lambda r: (r.parent / "deep.jsonl").write_text(
            '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
        ),
        ["eval", "{run}", "--data", "{run}/../deep.jsonl"],
        "JSON nested too deeply",
    ),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_commands_refuse(case: str, trained: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(trained, tmp_path / "run"))
    damage, command, message = RUN_CASES[case]
    damage(run_dir)
    before = snapshot(tmp_path)
    result = invoke(*[part.replace("{run}", str(run_dir)) for part in command])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert len(result.output) < MESSAGE_LIMIT
    assert snapshot(tmp_path) == before


def custom_code_model(folder: Path, tiny_model: Path, marker: Path) -> Path:
    """A copy of the tiny model whose config points at Python code that leaves a marker."""
    model = Path(shutil.copytree(tiny_model, folder / "custom"))
    (model / "custom.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the model code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "custom.CustomConfig",
        "AutoModelForCausalLM": "custom.CustomModel",
    }
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize(
    ("in_recipe", "on_command_line", "runs_code"),
    [(False, False, False), (True, False, False), (False, True, False), (True, True, True)],
)
def test_model_code_runs_only_when_recipe_and_command_line_both_ask(
    recipe_file: Path, tiny_model: Path, in_recipe: bool, on_command_line: bool, runs_code: bool
) -> None:
    marker = recipe_file.parent / "RAN"
    model = custom_code_model(recipe_file.parent, tiny_model, marker)
    command = ["validate", recipe_file, "--set", f"model.path={model}"]
    command += ["--set", f"model.trust_remote_code={str(in_recipe).lower()}"]
    if on_command_line:
        command.append("--trust-remote-code")
    result = invoke(*command)
    assert marker.exists() is runs_code
    if in_recipe and not on_command_line:
        assert result.exit_code == 2, result.output
        assert "Add --trust-remote-code" in " ".join(result.output.split())
        assert "Traceback" not in result.output
    else:  # without the recipe's consent, transformers' own Llama code loads the folder
        assert result.exit_code == 0, result.output


def test_a_dataset_with_a_loading_script_is_refused_without_running_it(recipe_file: Path) -> None:
    folder = recipe_file.parent / "scripted"
    folder.mkdir()
    marker = recipe_file.parent / "RAN"
    (folder / "scripted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('dataset code ran')\n"
    )
    splits = ["--set", "tasks.0.train=train", "--set", "tasks.0.eval=test"]
    result = invoke("validate", recipe_file, "--set", f"tasks.0.source={folder}", *splits)
    assert result.exit_code == 2, result.output
    assert "is not a `datasets.save_to_disk` folder" in " ".join(result.output.split())
    assert not marker.exists()
