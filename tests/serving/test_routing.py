"""Routing: prototypes from the base model's embeddings, routed scoring in training and in
`pecft eval`, the saved router, and the inputs that are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import invoke, snapshot, write_recipe
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.serving.router import Router, embed
from pecft_cli.strategies.base import lora_config
from pecft_cli.training.loop import run

ROUTED = ["strategy.name=olora", "strategy.routing=prototype", "training.max_steps=4"]


def test_an_input_goes_to_the_nearest_prototype(tmp_path: Path) -> None:
    router = Router()
    router.add("a", torch.tensor([[1.0, 0.0], [0.8, 0.2]]))
    router.add("b", torch.tensor([[0.0, 1.0]]))
    inputs = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), dim=1)
    assert router.route(inputs) == [0, 1]
    router.save(tmp_path)
    again = Router.load(tmp_path)
    assert again.tasks == ["a", "b"] and again.route(inputs) == [0, 1]
    (tmp_path / "prototypes.safetensors").write_bytes(b"damaged")
    with pytest.raises(PecftError, match="router does not load"):
        Router.load(tmp_path)


def test_embeddings_come_from_the_base_model_whatever_the_adapter(tiny_model: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    plain = embed(base, prompts, pad_id=0)
    assert plain.shape[0] == 3
    assert torch.allclose(plain.norm(dim=1), torch.ones(3), atol=1e-5)
    one = embed(base, prompts[1:2], pad_id=0)  # no padding: the same vector as in a batch
    assert torch.allclose(one[0], plain[1], atol=1e-5)
    model = get_peft_model(base, lora_config(LoraSection(r=2)))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    assert torch.equal(embed(model, prompts, pad_id=0), plain)


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("routed")
    result = run(load_recipe(write_recipe(folder, tiny_model), ROUTED))
    assert result.state.strategy == "olora+routing"
    return result.folder


def test_a_routed_run_records_routes_accuracy_and_its_router(routed_run: Path) -> None:
    state = json.loads((routed_run / "run.json").read_text())
    assert set(state["routing_accuracy"]) == {"codes", "yesno"}
    assert all(0.0 <= value <= 1.0 for value in state["routing_accuracy"].values())
    index = json.loads((routed_run / "router/router.json").read_text())
    assert index["tasks"] == ["codes", "yesno"]
    first = (routed_run / "eval/predictions/codes/yesno.jsonl").read_text().splitlines()
    assert {json.loads(line)["routed_to"] for line in first} == {"codes"}  # one task trained
    base = (routed_run / "eval/predictions/base/codes.jsonl").read_text()
    assert "routed_to" not in base
    for line in (routed_run / "eval/predictions/yesno/codes.jsonl").read_text().splitlines():
        assert json.loads(line)["routed_to"] in ("codes", "yesno")


def test_the_adapters_and_router_reproduce_the_matrix_in_a_fresh_process(
    routed_run: Path, tmp_path: Path
) -> None:
    env = dict(os.environ)
    out = tmp_path / "again"
    command = [sys.executable, "-m", "pecft_cli", "eval", str(routed_run), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "matrix.csv").read_text() == (routed_run / "eval/matrix.csv").read_text()
    for stage in ("codes", "yesno"):
        for task in ("codes", "yesno"):
            ours = (out / "predictions" / stage / f"{task}.jsonl").read_text()
            assert ours == (routed_run / "eval/predictions" / stage / f"{task}.jsonl").read_text()


def test_routing_a_strategy_with_one_shared_lora_is_refused(recipe_file: Path) -> None:
    result = invoke("validate", recipe_file, "--set", "strategy.routing=prototype")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "strategy.routing: 'seq' trains one LoRA for every task" in message
    assert "inclora, olora" in message and "Traceback" not in result.output


def test_a_router_that_does_not_match_the_adapters_is_refused(
    routed_run: Path, tmp_path: Path
) -> None:
    import shutil

    copy = Path(shutil.copytree(routed_run, tmp_path / "copy"))
    index = copy / "router/router.json"
    index.write_text(json.dumps({"kind": "prototype", "tasks": ["codes"]}))
    before = snapshot(copy)
    result = invoke("eval", copy)
    assert result.exit_code == 2
    assert "does not belong to these adapters" in " ".join(result.output.split())
    assert snapshot(copy) == before


def test_report_shows_the_routing_accuracy(routed_run: Path) -> None:
    result = invoke("report", routed_run)
    assert result.exit_code == 0, result.output
    assert "Routing accuracy (%)" in " ".join(result.output.split())


def test_generate_answers_each_prompt_with_the_adapter_its_router_picks(routed_run: Path) -> None:
    rows = routed_run.parent / "data/codes/eval.jsonl"
    result = invoke("generate", routed_run, "--task", "codes", "--file", rows, "--json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    lines = (routed_run / "eval/predictions/yesno/codes.jsonl").read_text().splitlines()
    predictions = sorted(map(json.loads, lines), key=lambda p: p["row"])
    assert [a["routed_to"] for a in answers] == [p["routed_to"] for p in predictions]
    assert [a["answer"] for a in answers] == [p["prediction"] for p in predictions]
    plain = invoke("generate", routed_run / "adapters/02-yesno", "--task", "codes", "-f", rows)
    assert plain.exit_code == 0, plain.output  # an adapter folder is used as it is, unrouted


def test_arrow_mixes_the_task_loras_and_eval_and_generate_reproduce_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    plain_dir, arrow_dir = tmp_path / "plain", tmp_path / "arrow"
    plain_dir.mkdir(), arrow_dir.mkdir()
    common = ["strategy.name=separate", "training.max_steps=4"]
    plain = run(load_recipe(write_recipe(plain_dir, tiny_model), common))
    arrow = run(
        load_recipe(write_recipe(arrow_dir, tiny_model), [*common, "strategy.routing=arrow"])
    )
    _, plain_rows = read_matrix(plain.folder / "eval/matrix.csv")
    _, arrow_rows = read_matrix(arrow.folder / "eval/matrix.csv")
    assert arrow_rows["codes"] == plain_rows["codes"]  # one expert: Arrow serves it alone
    assert sorted((arrow.folder / "task_loras").iterdir())[-1].name == "02-yesno"
    out = tmp_path / "again"
    assert invoke("eval", arrow.folder, "--out", out).exit_code == 0
    assert (out / "matrix.csv").read_text() == (arrow.folder / "eval/matrix.csv").read_text()
    rows = arrow_dir / "data/codes/eval.jsonl"
    result = invoke("generate", arrow.folder, "--task", "codes", "--file", rows, "--json")
    assert result.exit_code == 0, result.output
    lines = (arrow.folder / "eval/predictions/yesno/codes.jsonl").read_text().splitlines()
    predictions = sorted(map(json.loads, lines), key=lambda p: p["row"])
    assert [a["answer"] for a in json.loads(result.stdout)] == [
        p["prediction"] for p in predictions
    ]
