"""Routing: prototypes from the base model's embeddings, routed scoring in training and in
`pecft eval`, the saved router, and the inputs that are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import invoke, snapshot, write_recipe
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from pecft_cli.errors import PecftError
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.sections import LoraSection
from pecft_cli.runfolder.matrix import read_matrix
from pecft_cli.serving.features import (
    Features,
    affixes,
    default_layer,
    features,
    field_span,
    settled,
)
from pecft_cli.serving.router import (
    GaussianRouter,
    PrototypeRouter,
    Totals,
    load_router,
    route,
    save_router,
)
from pecft_cli.strategies.base import lora_config
from pecft_cli.training.loop import run

ROUTED = ["strategy.name=olora", "strategy.routing=prototype", "training.max_steps=4"]


def test_an_input_goes_to_the_nearest_prototype(tmp_path: Path) -> None:
    router = PrototypeRouter()
    router.add("a", router.totals(torch.tensor([[1.0, 0.0], [0.8, 0.2]])))
    router.add("b", router.totals(torch.tensor([[0.0, 1.0]])))
    inputs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [2.0, 1.9]])
    picks, margins = route(router, inputs)
    assert picks == [0, 1, 0] and margins[2] < margins[0]
    save_router(router, tmp_path)
    again = load_router(tmp_path)
    assert again.tasks == ["a", "b"] and route(again, inputs)[0] == [0, 1, 0]
    (tmp_path / "prototypes.safetensors").write_bytes(b"damaged")
    with pytest.raises(PecftError, match="router does not load"):
        load_router(tmp_path)


def test_a_router_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    save_file({"prototype.0": torch.tensor([1.0, 0.0])}, str(tmp_path / "prototypes.safetensors"))
    index = {"kind": "prototype", "pooling": "last token", "tasks": ["a"]}
    (tmp_path / "router.json").write_text(json.dumps(index))
    router = load_router(tmp_path)
    assert router.features == Features(-1, "last") and router.tasks == ["a"]


def two_clouds(shift: float, count: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tasks whose features differ along one quiet direction and share a loud one, where
    the nearest mean fails and a shared covariance does not."""
    draw = torch.Generator().manual_seed(seed)
    loud = torch.randn(2 * count, generator=draw) * 10
    quiet = torch.randn(2 * count, generator=draw) * 0.1
    quiet[count:] += shift
    loud[count:] += 3.0  # the means differ mostly along the loud direction
    x = torch.stack([loud, quiet], dim=1)
    return x[:count], x[count:]


def test_a_shared_covariance_separates_what_the_nearest_prototype_cannot() -> None:
    first, second = two_clouds(shift=1.0)
    test_first, test_second = two_clouds(shift=1.0, seed=1)
    inputs = torch.cat([test_first, test_second])
    truth = [0] * len(test_first) + [1] * len(test_second)
    accuracy = {}
    for router in (PrototypeRouter(), GaussianRouter(shrinkage=0.0)):
        router.add("a", router.totals(first))
        router.add("b", router.totals(second))
        picks, _ = route(router, inputs)
        accuracy[router.kind] = sum(p == t for p, t in zip(picks, truth, strict=True)) / len(truth)
    assert accuracy["gaussian"] > 0.99 and accuracy["prototype"] < 0.8, accuracy


def test_the_gaussian_router_is_the_textbook_lda_and_its_sums_add_up(tmp_path: Path) -> None:
    first, second = two_clouds(shift=1.0, count=50)
    router = GaussianRouter(shrinkage=0.0)
    router.add("a", router.totals(first))
    # the second task's sums from two halves, as two processes would add them
    one, two = router.totals(second[:20]), router.totals(second[20:])
    router.add("b", Totals(one.count + two.count, one.total + two.total, one.squares + two.squares))
    means = torch.stack([first.double().mean(0), second.double().mean(0)])
    centred = torch.cat([first.double() - means[0], second.double() - means[1]])
    covariance = centred.T @ centred / (len(centred) - 2)
    inputs = torch.randn(7, 2).double()
    weights = torch.linalg.solve(covariance, means.T)
    logits = inputs @ weights - 0.5 * (means * weights.T).sum(1)
    expected = torch.log_softmax(logits, dim=1)
    torch.testing.assert_close(router.scores(inputs).double(), expected, atol=1e-5, rtol=1e-5)
    save_router(router, tmp_path)
    again = load_router(tmp_path)
    assert torch.equal(again.scores(inputs), router.scores(inputs))
    assert torch.equal(again.upto(1).scores(inputs), torch.zeros(7, 1))
    posterior = router.confidence(router.scores(inputs))
    assert bool(((posterior >= 0.5) & (posterior <= 1.0)).all())


def test_features_come_from_the_base_model_whatever_the_adapter(tiny_model: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    for spec in (Features(-1, "last"), Features(1, "mean"), Features(0, "last")):
        plain = features(base, prompts, 0, spec)
        assert plain.shape == (3, base.config.hidden_size)
        one = features(base, prompts[1:2], 0, spec)  # no padding: the same vector as in a batch
        assert torch.allclose(one[0], plain[1], atol=1e-5)
    mean = features(base, prompts[1:2], 0, Features(0, "mean"))[0]
    embedded = base.get_input_embeddings()(torch.tensor([prompts[1]]))[0].mean(0)
    assert torch.allclose(mean, embedded, atol=1e-6)
    spec = Features(-1, "last")
    before = features(base, prompts, 0, spec)
    model = get_peft_model(base, lora_config(LoraSection(r=2)))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    assert torch.equal(features(model, prompts, 0, spec), before)


@pytest.fixture(scope="module", params=["prototype", "gaussian"])
def routed_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Path:
    folder = tmp_path_factory.mktemp("routed")
    overrides = [*ROUTED, f"strategy.routing={request.param}", "strategy.router.holdout=2"]
    result = run(load_recipe(write_recipe(folder, tiny_model), overrides))
    assert result.state.strategy == "olora+routing"
    return result.folder


def test_an_unset_router_layer_settles_two_thirds_of_the_way_up(tiny_model: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert default_layer(base) == 1  # 2 layers: round(4 / 3)
    base.config.num_hidden_layers = 30
    model = get_peft_model(base, lora_config(LoraSection(r=2)))
    assert default_layer(model) == 20  # read through the adapter, as in training
    assert settled(Features(None, "last"), model, [[1, 2]]) == Features(20, "last")
    assert settled(Features(3, "mean"), model, [[1, 2]]).layer == 3  # a given layer stays
    assert default_layer(torch.nn.Linear(2, 2)) == -1  # no depth known: the last layer


def test_a_routed_run_records_routes_accuracy_and_its_router(routed_run: Path) -> None:
    state = json.loads((routed_run / "run.json").read_text())
    assert set(state["routing_accuracy"]) == {"codes", "yesno"}
    assert all(0.0 <= value <= 1.0 for value in state["routing_accuracy"].values())
    confusion = state["routing_confusion"]["yesno"]
    assert set(confusion) == {"codes", "yesno"}
    assert sum(sum(row.values()) for row in confusion.values()) == 8  # 4 eval rows a task
    right = sum(row.get(task, 0) for task, row in confusion.items())
    assert state["routing_accuracy"]["yesno"] == round(right / 8, 6)
    assert set(state["routing_estimate"]) == {"yesno"}  # from the second task on
    index = json.loads((routed_run / "router/router.json").read_text())
    assert index["tasks"] == ["codes", "yesno"] and index["kind"] in ("prototype", "gaussian")
    assert index["layer"] == 1  # unset in the recipe: settled two thirds up the 2 layers
    first = (routed_run / "eval/predictions/codes/yesno.jsonl").read_text().splitlines()
    assert {json.loads(line)["routed_to"] for line in first} == {"codes"}  # one task trained
    base = (routed_run / "eval/predictions/base/codes.jsonl").read_text()
    assert "routed_to" not in base
    for line in (routed_run / "eval/predictions/yesno/codes.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        assert prediction["routed_to"] in ("codes", "yesno")
        assert 0.0 <= prediction["routing_confidence"] <= 1.0


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
    index.write_text(json.dumps(json.loads(index.read_text()) | {"tasks": ["codes"]}))
    before = snapshot(copy)
    result = invoke("eval", copy)
    assert result.exit_code == 2
    assert "does not belong to these adapters" in " ".join(result.output.split())
    assert snapshot(copy) == before


def test_report_shows_the_routing_accuracy_and_the_confusion_matrix(routed_run: Path) -> None:
    result = invoke("report", routed_run)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "Routing accuracy (%)" in shown and "held-out estimate" in shown
    assert "Routing after yesno" in shown
    confusion = json.loads((routed_run / "run.json").read_text())["routing_confusion"]["yesno"]
    for task, row in confusion.items():
        counts = " ".join(str(row.get(target, 0)) for target in ("codes", "yesno"))
        assert f"{task} {counts}" in " ".join(shown.replace("│", " ").split())


def test_a_run_whose_tasks_cannot_be_told_apart_warns(tmp_path: Path, tiny_model: Path) -> None:
    recipe_path = write_recipe(tmp_path, tiny_model)
    recipe = yaml.safe_load(recipe_path.read_text())
    twin = dict(recipe["tasks"][0], name="twin", target="{country}")  # same inputs, other answers
    recipe["tasks"] = [recipe["tasks"][0], twin]
    recipe_path.write_text(yaml.safe_dump(recipe))
    overrides = ["strategy.name=separate", "strategy.routing=gaussian", "training.max_steps=2"]
    result = invoke("train", recipe_path, *[item for o in overrides for item in ("--set", o)])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "warning: after twin the router sends only" in shown
    estimate = json.loads((tmp_path / "run/run.json").read_text())["routing_estimate"]["twin"]
    assert estimate < 0.9


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


def test_a_router_layer_the_model_lacks_is_refused_at_validate(recipe_file: Path) -> None:
    routed = ["strategy.name=separate", "strategy.routing=gaussian", "strategy.router.layer=9"]
    result = invoke("validate", recipe_file, *[x for o in routed for x in ("--set", o)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "strategy.router.layer: 9 is not a hidden state of this model, which has 2" in message
    assert "Traceback" not in result.output
    fine = invoke("validate", recipe_file, *[x for o in routed[:2] for x in ("--set", o)])
    assert fine.exit_code == 0, fine.output


def test_the_fields_are_what_lies_between_the_templates_fixed_tokens(tiny_model: Path) -> None:
    prompts = [[1, 2, 50, 51, 7, 8], [1, 2, 60, 7, 8], [1, 2, 70, 71, 72, 7, 8]]
    prefix, suffix = affixes(prompts)
    assert (prefix, suffix) == ((1, 2), (7, 8))
    assert affixes([[1, 2, 3], [1, 2, 3]]) == ((1, 2, 3), ())  # the ends never overlap
    spec = Features(0, "fields", prefix, suffix)
    assert field_span([1, 2, 50, 51, 7, 8], spec) == (2, 4)
    assert field_span([9, 50, 7, 8], spec) == (0, 2)  # another template's start is kept
    assert field_span([1, 2, 7, 8], spec) == (0, 4)  # nothing left: the whole prompt
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    vectors = features(base, prompts, 0, spec)
    embedded = base.get_input_embeddings()(torch.tensor([prompts[0]]))[0, 2:4].mean(0)
    assert torch.allclose(vectors[0], embedded, atol=1e-6)


def test_a_fields_router_learns_its_template_ends_and_saves_them(
    tmp_path: Path, tiny_model: Path
) -> None:
    overrides = [*ROUTED, "strategy.routing=gaussian", "strategy.router.pooling=fields"]
    result = run(load_recipe(write_recipe(tmp_path, tiny_model), overrides))
    index = json.loads((result.folder / "router/router.json").read_text())
    assert index["pooling"] == "fields" and index["prefix"] and index["suffix"]
    router = load_router(result.folder / "router")
    assert router.features.prefix == tuple(index["prefix"])
    out = tmp_path / "again"
    assert invoke("eval", result.folder, "--out", out).exit_code == 0
    assert (out / "matrix.csv").read_text() == (result.folder / "eval/matrix.csv").read_text()
