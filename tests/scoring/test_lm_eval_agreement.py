"""pecft's choice and generation metrics against lm-evaluation-harness on the same model,
adapter and data.

pecft ranks choices and decodes answers with its own code, not the harness's, yet promises the
harness's `acc` and `acc_norm` and the answers its `generate_until` writes. Only running the
harness itself on a trained adapter shows that the two pick (or write) the same answer for
every example.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pecft_cli.data.tasks import TaskData
from pecft_cli.model.load import load_model, load_tokenizer, model_location
from pecft_cli.recipe.load import load_recipe
from pecft_cli.recipe.schema import Recipe, TaskSection
from pecft_cli.recipe.sections import EvaluationSection
from pecft_cli.scoring.scorer import cut_at_stop, score_task
from pecft_cli.training.loop import run
from pecft_cli.training.preflight import preflight

pytest.importorskip("lm_eval")

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
TASK = "unicode_category"
HARNESS_TASK = f"pecft_{TASK}"
LOGPROB_TOLERANCE = 1e-3  # pecft rounds to 4 decimals; float32 batches differ in the 5th
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# O-LoRA's prompt layout (recipes/benchmarks/): task, data set, instruction and options ahead
# of the input, the same for every example of a task.
INSTRUCTIONS = {
    "unicode_category": "Task:TC\nDataset:unicode\nWhat is the Unicode category of the following "
    "character? Choose one from the option.\nOption: letter, mark, number, punctuation, symbol \n",
    "numeric_value": "Task:QA\nDataset:unicode\nWhat is the numeric value of the following "
    "character? Answer with the number alone.\n",
}


def train_adapter(folder: Path, max_steps: int = 24) -> tuple[Recipe, Path]:
    """A few LoRA steps on the quickstart's choice task. 24 steps spread the answers over all five
    categories (12 leave nearly every answer "punctuation"), so agreement means something."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["tasks"] = [task for task in raw["tasks"] if task["name"] == TASK]
    for split in ("train", "eval"):
        raw["tasks"][0][split] = str(QUICKSTART.parent / raw["tasks"][0][split])
    raw["output_dir"] = str(folder / "run")
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    recipe = load_recipe(recipe_path, [f"training.max_steps={max_steps}"])
    result = run(recipe)
    return recipe, result.folder / "adapters" / f"01-{TASK}"


def load_pecft(
    recipe: Recipe, adapter: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TaskData]:
    """The base model with the adapter as stock PEFT loads it, and the task's tokenized data."""
    tokenizer = load_tokenizer(recipe.model)
    (data,) = preflight(recipe, tokenizer).tasks
    return PeftModel.from_pretrained(load_model(recipe.model), adapter), tokenizer, data


def pecft_predictions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    config: EvaluationSection,
) -> list[dict[str, Any]]:
    """pecft's per-example choice predictions, in eval-file order."""
    return score_task(model, tokenizer, data, config).predictions


def jinja(template: str) -> str:
    """A pecft `{field}` template as the Jinja template the harness renders."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append("{{ " + name + " }}")
    return "".join(parts)


def write_harness_task(task: TaskSection, folder: Path) -> Path:
    """The recipe's task as a harness YAML task over the same eval file.

    The prompt's trailing whitespace becomes the harness's target delimiter, so the harness
    scores " letter" after "...category:", the split pecft makes.
    """
    text = task.prompt.rstrip()
    return write_harness_yaml(
        folder,
        HARNESS_TASK,
        task,
        output_type="multiple_choice",
        doc_to_text=jinja(text),
        target_delimiter=task.prompt[len(text) :],
        doc_to_choice=task.choices,
        metric_list=[
            {"metric": metric, "aggregation": "mean", "higher_is_better": True}
            for metric in ("acc", "acc_norm")
        ],
    )


def write_harness_yaml(folder: Path, name: str, task: TaskSection, **spec: Any) -> Path:
    """A harness task `name` over the task's eval file, with its target template; `spec` adds
    the output type, prompt and metrics."""
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(task.eval)},
            "cache_dir": str(folder / "datasets-cache"),
        },
        "test_split": "test",
        "doc_to_target": jinja(task.target_template()),
        **spec,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def write_harness_generate_task(
    task: TaskSection, config: EvaluationSection, folder: Path, name: str
) -> Path:
    """The recipe's generation task as a harness `generate_until` task `name` over the same
    eval file: greedy, the recipe's stop strings and max_new_tokens.

    pecft generates after the prompt with its trailing whitespace moved onto the answer
    (`data.split_space`), the context it trains the answer after; `generate_until` continues
    its context as written. So the prompt goes to the harness stripped, as `write_harness_task`
    strips it: kept, "value: " would end in a lone space token ("Ġ" for SmolLM2) that the
    model is then spared writing, and the two would score different prompts.
    """
    return write_harness_yaml(
        folder,
        name,
        task,
        output_type="generate_until",
        doc_to_text=jinja(task.prompt.rstrip()),
        generation_kwargs={
            "until": config.stop,
            "max_gen_toks": config.max_new_tokens,
            "do_sample": False,
        },
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )


def harness_requests(task_folder: Path, name: str) -> list[Any]:
    """The harness's requests (instances) for task `name`, in eval-file order."""
    from lm_eval.tasks import get_task_dict

    task = get_task_dict([name], harness_manager(task_folder))[name]
    task.build_all_requests()
    return task.instances


def instructed(task: TaskSection) -> None:
    """The task's prompt behind its O-LoRA-style instruction."""
    task.prompt = INSTRUCTIONS[task.name] + task.prompt


def quickstart_task(recipe: Recipe, name: str, max_new_tokens: int) -> Recipe:
    """The adapter's recipe with another quickstart task in place of its own."""
    (section,) = [task for task in load_recipe(QUICKSTART).tasks if task.name == name]
    files = {split: str(QUICKSTART.parent / getattr(section, split)) for split in ("train", "eval")}
    section = TaskSection.model_validate(section.model_dump() | files)
    evaluation = recipe.evaluation.model_copy(update={"max_new_tokens": max_new_tokens})
    return recipe.model_copy(update={"tasks": [section], "evaluation": evaluation})


def harness_model(recipe: Recipe, adapter: Path, batch_size: int) -> Any:
    """lm-eval's own `hf` model, built from the same converted base model and adapter folders
    as `lm_eval --model hf --model_args ...` builds it."""
    from lm_eval.api.registry import get_model

    args = f"pretrained={model_location(recipe.model)},peft={adapter},dtype={recipe.model.dtype}"
    return get_model("hf").create_from_arg_string(args, {"batch_size": batch_size, "device": "cpu"})


def harness_manager(task_folder: Path) -> Any:
    """A task manager that sees only the written task, not the harness's thousands."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_folder), include_defaults=False)


def harness_samples(lm: Any, task_folder: Path) -> list[dict[str, Any]]:
    """lm-eval's per-document results (acc, acc_norm, log-likelihoods) in eval-file order."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm,
        tasks=[HARNESS_TASK],
        task_manager=harness_manager(task_folder),
        bootstrap_iters=0,
        log_samples=True,
    )
    return sorted(results["samples"][HARNESS_TASK], key=lambda sample: sample["doc_id"])


def logprob_gaps(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
    """Examples whose per-choice log-probabilities differ by more than float32 noise: a sign of
    different tokens or positions even where the chosen answer happens to agree."""
    lines = []
    for mine, sample in zip(ours, theirs, strict=True):
        harness_lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        gap = max(abs(a - b) for a, b in zip(mine["logprobs"], harness_lls, strict=True))
        if gap > LOGPROB_TOLERANCE:
            lines.append(f"row {mine['row']}: pecft {mine['logprobs']} vs lm-eval {harness_lls}")
    return lines


def disagreements(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
    """One line per example where pecft and the harness score acc or acc_norm differently."""
    lines = []
    for mine, sample in zip(ours, theirs, strict=True):
        if (mine["correct"], mine["correct_norm"]) != (sample["acc"] == 1, sample["acc_norm"] == 1):
            harness_lls = [round(float(ll), 4) for ll, _ in sample["filtered_resps"]]
            lines.append(
                f"eval row {mine['row']} (doc_id {sample['doc_id']}, {sample['doc']}): "
                f"pecft acc={mine['correct']} "
                f"acc_norm={mine['correct_norm']} logprobs={mine['logprobs']}; lm-eval "
                f"acc={sample['acc']} acc_norm={sample['acc_norm']} logprobs={harness_lls}"
            )
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, Path]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, value)
        return train_adapter(tmp_path_factory.mktemp("adapter"))


def multi_token_choices(task: TaskSection) -> None:
    """The same data with answers of several tokens (" letter character"), so that the choices
    continue from the prompt's cached keys and values instead of the prompt's last logits."""
    assert isinstance(task.choices, list)
    task.choices = [f"{choice} character" for choice in task.choices]
    task.target = "{category} character"


@pytest.mark.real_model
@pytest.mark.parametrize("variant", ["single-token choices", "multi-token choices"])
def test_pecft_choice_scores_match_lm_eval(
    trained: tuple[Recipe, Path], variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    recipe, adapter = trained
    recipe = recipe.model_copy(deep=True)
    if variant == "multi-token choices":
        multi_token_choices(recipe.tasks[0])
    model, tokenizer, data = load_pecft(recipe, adapter)
    if variant == "multi-token choices":
        assert all(len(ids) > 1 for ids in data.eval[0].choice_ids)
    ours = pecft_predictions(model, tokenizer, data, recipe.evaluation)
    task_folder = write_harness_task(recipe.tasks[0], tmp_path / "harness")
    lm = harness_model(recipe, adapter, recipe.evaluation.batch_size)
    theirs = harness_samples(lm, task_folder)

    assert [sample["doc_id"] for sample in theirs] == list(range(len(ours))) == list(range(60))
    prompt = recipe.tasks[0].prompt
    assert [prompt.format_map(s["doc"]).rstrip() for s in theirs] == [p["input"] for p in ours]
    differing = disagreements(ours, theirs)
    pecft_acc = [sum(p[key] for p in ours) / len(ours) for key in ("correct", "correct_norm")]
    harness_acc = [sum(s[key] for s in theirs) / len(theirs) for key in ("acc", "acc_norm")]
    assert not differing and pecft_acc == harness_acc, (
        f"pecft acc/acc_norm {pecft_acc} vs lm-eval {harness_acc}; "
        f"{len(differing)} examples differ:\n" + "\n".join(differing)
    )
    gaps = logprob_gaps(ours, theirs)
    assert not gaps, f"{len(gaps)} examples' log-probabilities differ:\n" + "\n".join(gaps)


@pytest.mark.real_model
@pytest.mark.parametrize("task", ["numeric_value", "unicode_category"])
def test_pecft_generation_matches_lm_eval_on_an_instructed_prompt(
    trained: tuple[Recipe, Path], task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy exact_match answers behind an O-LoRA instruction, pecft's `score_task` against
    the harness's `generate_until`. numeric_value is the evaluation benchmark's case (most
    answers end at once, at end-of-sequence); unicode_category, the adapter's own task, scored
    by generation, gives answers of every kind."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    recipe, adapter = trained
    recipe = quickstart_task(recipe, task, max_new_tokens=6)
    recipe.tasks[0].metric = "exact_match"
    instructed(recipe.tasks[0])
    config = recipe.evaluation
    model, tokenizer, data = load_pecft(recipe, adapter)
    ours = score_task(model, tokenizer, data, config).predictions
    name = f"pecft_{task}"
    requests = harness_requests(
        write_harness_generate_task(recipe.tasks[0], config, tmp_path / "harness", name), name
    )
    lm = harness_model(recipe, adapter, config.batch_size)

    assert [r.doc_id for r in requests] == list(range(len(ours))) == list(range(len(data.eval)))
    # The same context, character for character: a trailing space left on one side's prompt
    # ends it in a token the other side has to generate.
    assert [r.args[0] for r in requests] == [p["input"] for p in ours]
    theirs = [
        cut_at_stop(answer, config.stop)
        for answer in lm.generate_until(requests, disable_tqdm=True)
    ]
    differing = [
        f"row {p['row']} ({p['input'][-30:]!r}): pecft {p['prediction']!r}, lm-eval {answer!r}"
        for p, answer in zip(ours, theirs, strict=True)
        if p["prediction"] != answer
    ]
    assert not differing, f"{len(differing)} of {len(ours)} answers differ:\n" + "\n".join(
        differing
    )
