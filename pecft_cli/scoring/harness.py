"""General ability at every stage: lm-evaluation-harness tasks scored through its Python API.

`evaluation.harness` lists harness tasks by name or as local task YAML files. After the base row
and after every stage, the model as it stands (its adapter active) is wrapped in the harness's
own `HFLM` and each task scored with `simple_evaluate`; the task's first metric becomes one cell
of eval/harness.csv, a matrix of its own beside the task matrix. lm-eval is an optional extra
(`pip install 'pecft-cli[harness]'`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pecft_cli.errors import PecftError, did_you_mean
from pecft_cli.recipe.sections import EvaluationSection

INSTALL = "pip install 'pecft-cli[harness]'"


@dataclass(frozen=True)
class HarnessTasks:
    """The harness tasks to score: names, and the folders their local YAML files are in."""

    names: list[str]
    folders: list[str]

    def manager(self) -> Any:
        """The harness's task index: the local folders, and the harness's own tasks when a
        task is named rather than given as a file."""
        from lm_eval.tasks import TaskManager

        local = len(self.folders) == len(self.names)
        return TaskManager(include_path=self.folders or None, include_defaults=not local)


def harness_tasks(evaluation: EvaluationSection) -> HarnessTasks | None:
    """The recipe's harness tasks, checked: lm-eval installed, every file a task YAML, every
    name a task the harness knows. None when the recipe asks for none."""
    if not evaluation.harness:
        return None
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PecftError(
            "evaluation.harness needs lm-evaluation-harness, which is not installed: "
            f"{INSTALL}, or drop evaluation.harness."
        ) from None
    names, folders = [], []
    for entry in evaluation.harness:
        if entry.lower().endswith((".yaml", ".yml")):
            names.append(local_task_name(Path(entry)))
            folders.append(str(Path(entry).parent))
        else:
            names.append(entry)
    tasks = HarnessTasks(names, sorted(set(folders)))
    known = tasks.manager().all_tasks
    for name in names:
        if name not in known:
            raise PecftError(
                f"evaluation.harness: '{name}' is not an lm-evaluation-harness task"
                f"{did_you_mean(name, list(known)) or '.'} Give a task name the harness lists "
                "(lm-eval ls tasks) or the path of a task YAML file."
            )
    return tasks


def local_task_name(path: Path) -> str:
    """The `task:` a local harness YAML declares."""
    import yaml

    if not path.is_file():
        raise PecftError(f"evaluation.harness: {path} does not exist; give a task YAML file.")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PecftError(f"evaluation.harness: {path} is not valid YAML ({exc}).") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
        raise PecftError(
            f"evaluation.harness: {path} names no `task:`; a harness task YAML starts with one."
        )
    return spec["task"]


def score_harness(
    model: Any, tokenizer: Any, tasks: HarnessTasks, evaluation: EvaluationSection
) -> list[float]:
    """Each harness task's first metric with the model as it stands, in the recipe's order."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        with untouched_generators():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=evaluation.batch_size)
            results = simple_evaluate(
                model=lm,
                tasks=tasks.names,
                task_manager=tasks.manager(),
                limit=evaluation.harness_limit,
                bootstrap_iters=0,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
    finally:
        model.train(was_training)
    return [first_metric(results["results"][name], name) for name in tasks.names]


@contextlib.contextmanager
def untouched_generators() -> Iterator[None]:
    """The harness seeds Python's, NumPy's and torch's generators; give training back its own."""
    import numpy as np

    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def first_metric(result: dict[str, Any], name: str) -> float:
    """A task's headline number: its first metric (`acc,none`, `exact_match,...`)."""
    for key, value in result.items():
        if "," in key and "_stderr" not in key and isinstance(value, int | float):
            return float(value)
    raise PecftError(f"evaluation.harness: the harness reported no metric for task '{name}'.")


def harness_changes(names: list[str], rows: dict[str, list[float | None]]) -> dict[str, Any]:
    """Per harness task: its base score, its score after the last stage, and the change."""
    stages = list(rows)
    base, last = rows[stages[0]], rows[stages[-1]]
    out = {}
    for column, name in enumerate(names):
        before, after = base[column], last[column]
        change = None if before is None or after is None else after - before
        out[name] = {"base": before, "final": after, "change": change}
    return out
