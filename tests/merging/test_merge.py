"""`pecft merge-adapters` on tiny trained runs: exact merges, folding into the base, scoring the
result, and refusals that leave nothing behind."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import invoke, snapshot, write_recipe
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import pecft_cli.merging.merge as merge_module
from pecft_cli.merging.merge import merge_adapters
from pecft_cli.merging.request import MergeOptions
from pecft_cli.recipe.load import load_recipe
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.training.loop import run

IDS = torch.tensor([[3, 17, 42, 8, 99, 5], [11, 12, 13, 14, 15, 16]])


def train_tiny(folder: Path, tiny_model: Path, strategy: str) -> Path:
    path = write_recipe(folder, tiny_model)
    recipe = yaml.safe_load(path.read_text())
    recipe["strategy"] = {"name": strategy}
    recipe["lora"]["dropout"] = 0.0
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run(load_recipe(path))
    return folder / "run"


@pytest.fixture(scope="module")
def olora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    return train_tiny(tmp_path_factory.mktemp("olora"), tiny_model, "olora")


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    return train_tiny(tmp_path_factory.mktemp("seq"), tiny_model, "seq")


@pytest.fixture
def olora_copy(olora_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(olora_run, tmp_path / "run"))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def base(tiny_model: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def with_adapter(tiny_model: Path, adapter: Path) -> torch.Tensor:
    return logits(PeftModel.from_pretrained(base(tiny_model), adapter))


def summed_task_loras(tiny_model: Path, run_dir: Path) -> torch.Tensor:
    """Both tasks' own LoRAs loaded side by side and active together: PEFT adds their outputs."""
    model = PeftModel.from_pretrained(
        base(tiny_model), run_dir / "task_loras/01-codes", adapter_name="a"
    )
    model.load_adapter(run_dir / "task_loras/02-yesno", adapter_name="b")
    model.base_model.set_adapter(["a", "b"])
    return logits(model)


def test_cat_of_task_loras_equals_their_sum(olora_run: Path, tiny_model: Path, tmp_path: Path):
    out = tmp_path / "cat"
    result = merge_adapters([olora_run], out)
    expected = summed_task_loras(tiny_model, olora_run)
    assert not torch.allclose(expected, logits(base(tiny_model)), atol=1e-4)
    torch.testing.assert_close(with_adapter(tiny_model, out), expected, atol=1e-5, rtol=0)
    record = json.loads((out / "merge.json").read_text())
    assert record["input_kind"] == "task_loras"
    assert [i["name"] for i in record["inputs"]] == ["codes", "yesno"]
    assert record["method"] == "cat" and record["rank"] == 8 and record["weights"] == [1.0, 1.0]
    assert result.record["versions"]["peft"]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "merge.json",
    ] or sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "merge.json",
    ]


def test_svd_at_full_rank_equals_the_sum_and_lower_rank_does_not(
    olora_run: Path, tiny_model: Path, tmp_path: Path
) -> None:
    expected = summed_task_loras(tiny_model, olora_run)
    merge_adapters([olora_run], tmp_path / "svd8", MergeOptions(method="svd", rank=8))
    torch.testing.assert_close(
        with_adapter(tiny_model, tmp_path / "svd8"), expected, atol=1e-4, rtol=0
    )
    merge_adapters([olora_run], tmp_path / "svd1", MergeOptions(method="svd", rank=1))
    assert not torch.allclose(with_adapter(tiny_model, tmp_path / "svd1"), expected, atol=1e-4)


def test_into_base_gives_plain_transformers_the_adapters_logits(
    olora_run: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    result = invoke("merge-adapters", olora_run, "--out", out, "--into-base")
    assert result.exit_code == 0, result.output
    plain = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        logits(plain), summed_task_loras(tiny_model, olora_run), atol=1e-5, rtol=0
    )
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (
        "chat_template" in (out / "tokenizer_config.json").read_text()
        or (out / "chat_template.jinja").is_file()
    )
    assert not list(out.glob("*.bin"))


def test_one_adapter_folds_into_the_base(seq_run: Path, tiny_model: Path, tmp_path: Path):
    adapter = seq_run / "adapters/02-yesno"
    merge_adapters([adapter], tmp_path / "model", MergeOptions(into_base=True))
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(tmp_path / "model")),
        with_adapter(tiny_model, adapter),
        atol=1e-5,
        rtol=0,
    )


def test_stage_adapters_of_a_seq_run_are_averaged_by_default(seq_run: Path, tmp_path: Path):
    result = merge_adapters([seq_run], tmp_path / "avg", MergeOptions(method="linear"))
    assert result.record["input_kind"] == "stages"
    assert result.record["weights"] == [0.5, 0.5]
    assert result.record["rank"] == 4


def test_dare_is_fixed_by_its_seed(olora_run: Path, tmp_path: Path) -> None:
    def dare(name: str, seed: int) -> bytes:
        merge_adapters(
            [olora_run], tmp_path / name, MergeOptions(method="dare_linear", density=0.5, seed=seed)
        )
        return (tmp_path / name / "adapter_model.safetensors").read_bytes()

    first = dare("a", 1)
    assert dare("b", 1) == first
    assert dare("c", 2) != first


def test_rslora_adapters_merge_without_double_scaling(tiny_model: Path, tmp_path: Path):
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False, target_modules=["q_proj"]
        )
        model = get_peft_model(base(tiny_model), config)
        model.save_pretrained(tmp_path / f"rs{seed}")
        folders.append(tmp_path / f"rs{seed}")
    merge_adapters(folders, tmp_path / "cat", MergeOptions(base=str(tiny_model)))
    model = PeftModel.from_pretrained(base(tiny_model), folders[0], adapter_name="a")
    model.load_adapter(folders[1], adapter_name="b")
    model.base_model.set_adapter(["a", "b"])
    torch.testing.assert_close(
        with_adapter(tiny_model, tmp_path / "cat"), logits(model), atol=1e-5, rtol=0
    )


def test_eval_scores_the_merge_next_to_the_run(olora_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged-cat"
    result = invoke("merge-adapters", olora_copy, "--out", out, "--eval", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    _, matrix = read_matrix(olora_copy / "eval/matrix.csv")
    assert document["last_stage"] == {"stage": "yesno", "scores": matrix["yesno"]}
    # The cat merge is the stacked model itself, so it scores what the last stage scored.
    assert document["scores"] == pytest.approx(matrix["yesno"], abs=1e-6)
    tasks, rows = read_matrix(olora_copy / "eval/merges.csv", key="merge")
    assert tasks == ["codes", "yesno"] and rows["merged-cat"] == pytest.approx(document["scores"])
    assert (olora_copy / "eval/merges/merged-cat/yesno.jsonl").is_file()
    assert json.loads((out / "merge.json").read_text())["eval"]["scores"] == document["scores"]
    report = invoke("report", olora_copy)
    assert report.exit_code == 0, report.output
    assert "merged-cat" in report.output


def refusal(args: list, message: str, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = invoke("merge-adapters", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_is_refused_with_nothing_written(
    olora_copy: Path, seq_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    loras = [olora_copy / "task_loras/01-codes", olora_copy / "task_loras/02-yesno"]
    refusal([olora_copy / "recipe.yaml", "--out", out], "not an adapter folder", tmp_path)
    refusal([olora_copy, "--out", out, "--method", "catt"], "did you mean 'cat'", tmp_path)
    refusal([olora_copy, "--out", out, "--weights", "1,2,3"], "3 weights given for 2", tmp_path)
    refusal([olora_copy, "--out", out, "--weights", "a,b"], "comma-separated numbers", tmp_path)
    refusal(
        [olora_copy, "--out", out, "--method", "ties", "--density", "1.5"], "in (0, 1]", tmp_path
    )
    refusal([olora_copy, "--out", out, "--method", "ties"], "give that fraction", tmp_path)
    refusal([olora_copy, "--out", out, "--density", "0.5"], "does not prune", tmp_path)
    refusal([olora_copy, "--out", out, "--rank", "2"], "applies to svd methods", tmp_path)
    refusal([olora_copy, "--out", out, "--tasks", "codez"], "did you mean 'codes'", tmp_path)
    refusal([loras[0], "--out", out], "combining needs two or more", tmp_path)
    refusal([olora_copy, "--out", olora_copy / "eval"], "not an earlier merge", tmp_path)
    refusal([*loras, "--out", out, "--tasks", "codes"], "--tasks picks adapters", tmp_path)

    config = json.loads((loras[1] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/else"
    (loras[1] / "adapter_config.json").write_text(json.dumps(config))
    refusal([*loras, "--out", out], "different base models", tmp_path)

    config["base_model_name_or_path"] = json.loads((loras[0] / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    config["r"] = 2
    (loras[1] / "adapter_config.json").write_text(json.dumps(config))
    refusal([*loras, "--out", out, "--method", "linear"], "different ranks", tmp_path)

    lonely = tmp_path / "lonely"
    shutil.copytree(loras[0], lonely / "a")
    shutil.copytree(loras[0], lonely / "b")
    refusal(
        [lonely / "a", lonely / "b", "--out", out, "--eval"],
        "do not come from a pecft run",
        tmp_path,
    )


def test_existing_out_needs_force_and_force_replaces_only_merges(
    olora_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cat"
    merge_adapters([olora_run], out)
    refusal([olora_run, "--out", out], "pass --force", tmp_path)
    result = invoke("merge-adapters", olora_run, "--out", out, "--method", "svd", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "merge.json").read_text())["method"] == "svd"


def test_a_failed_write_leaves_no_partial_folder(
    olora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cat"
    merge_adapters([olora_run], out)
    before = snapshot(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(merge_module, "save_adapter", disk_full)
    with pytest.raises(OSError):
        merge_adapters([olora_run], out, MergeOptions(method="svd", force=True))
    assert snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat"]
