"""Merging adapters with PEFT: several per-task LoRAs into one, or an adapter into the base weights.

Every combination is PEFT's `add_weighted_adapter`; this module picks the inputs, checks up
front what PEFT would accept but get wrong (mixed ranks for a one-rank method, DoRA or non-LoRA
adapters, adapters of different base models), writes the result in one rename, and can score
the result on the run's tasks so that it can be read against the run's last matrix row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel

from pecft_cli import __version__, runs
from pecft_cli.adapters import save_adapter
from pecft_cli.artifacts import MERGE_FILE, adapter_config, adapter_run, base_of, is_run
from pecft_cli.data import load_task
from pecft_cli.distributed import device
from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.evaluate import score_task
from pecft_cli.events import EventCallback, ignore
from pecft_cli.model import load_model, load_tokenizer
from pecft_cli.recipe import MAX_SEED, ModelSection
from pecft_cli.recipe_file import load_recipe

METHODS = (
    "cat",
    "svd",
    "linear",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
ONE_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
MERGED = "merged"


def uses_density(method: str) -> bool:
    return method.startswith(("ties", "dare", "magnitude_prune"))


def uses_rank(method: str) -> bool:
    return method.endswith("svd")


@dataclass
class MergeInput:
    """One adapter to merge: a display name, its folder and its PEFT config."""

    name: str
    path: Path
    config: PeftConfig

    @property
    def rank(self) -> int:
        return max([self.config.r, *self.config.rank_pattern.values()])


@dataclass
class MergeResult:
    out: Path
    record: dict[str, Any]
    tasks: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    last_stage: tuple[str, list[float | None]] | None = None


def merge_inputs(
    sources: list[Path], tasks: list[str] | None
) -> tuple[list[MergeInput], Path | None, str]:
    """The adapters to merge, the run they come from (if one), and what they are.

    A run folder gives each task's own LoRA where the strategy trained one per task (inclora,
    olora), otherwise the adapter of each stage; explicit folders are taken as given.
    """
    if len(sources) == 1 and is_run(sources[0].resolve()):
        root = sources[0].resolve()
        saved = runs.open_run(root)
        own = {
            task: saved.folder.task_lora(i, task)
            for i, task in enumerate(saved.tasks)
            if (saved.folder.task_lora(i, task) / "adapter_config.json").is_file()
        }
        kind, found = ("task_loras", own) if own else ("stages", saved.adapters)
        if not found:
            raise PecftError(f"{root}: the run has no saved adapters yet; nothing to merge.")
        chosen = runs.pick(tasks, list(found), "task", root)
        return [MergeInput(n, found[n], adapter_config(found[n])) for n in chosen], root, kind
    if tasks:
        raise PecftError(
            "--tasks picks adapters from a run folder; with adapter folders, name only the ones "
            "to merge."
        )
    inputs = []
    for source in sources:
        path = source.resolve()
        if not path.is_dir() or not (path / "adapter_config.json").is_file():
            raise PecftError(
                f"{source}: not an adapter folder (it has no adapter_config.json). Give a pecft "
                "run folder, or folders that PEFT's save_pretrained wrote."
            )
        name = (
            path.name if path.name not in [i.name for i in inputs] else f"{path.name}-{len(inputs)}"
        )
        inputs.append(MergeInput(name, path, adapter_config(path)))
    owners = {adapter_run(i.path) for i in inputs}
    return inputs, owners.pop() if len(owners) == 1 else None, "adapters"


def check_options(
    method: str, count: int, weights: list[float] | None, density: float | None, rank: int | None
) -> None:
    """Method, weights, density and rank, checked before anything is loaded."""
    if method not in METHODS:
        raise PecftError(
            f"--method {method}: not a merge method{did_you_mean(method, list(METHODS)) or '.'} "
            f"Valid: {', '.join(METHODS)}."
        )
    if weights is not None and not all(math.isfinite(w) for w in weights):
        raise PecftError(f"--weights {short(weights)}: every weight must be a finite number.")
    if weights is not None and len(weights) != count:
        raise PecftError(
            f"--weights: {len(weights)} weights given for {count} adapters; give one weight per "
            "adapter, in order, comma-separated."
        )
    if density is not None and not uses_density(method):
        raise PecftError(
            f"--density: the method {method} does not prune; density applies to ties, dare_* and "
            "magnitude_prune* methods."
        )
    if uses_density(method) and density is None:
        raise PecftError(
            f"--density: the method {method} keeps only a fraction of each adapter's weights; "
            "give that fraction with --density (a number in (0, 1], e.g. 0.5)."
        )
    if density is not None and not 0 < density <= 1:
        raise PecftError(f"--density {density}: give the fraction of weights kept, in (0, 1].")
    if rank is not None and not uses_rank(method):
        raise PecftError(
            f"--rank: the method {method} sets the rank itself (cat: the sum of the ranks; "
            "linear, ties, dare_*, magnitude_prune: the adapters' common rank); --rank applies "
            "to svd methods."
        )
    if rank is not None and rank < 1:
        raise PecftError(f"--rank {rank}: give a positive rank.")


def check_adapters(inputs: list[MergeInput], method: str, combining: bool) -> None:
    """Refuse adapters that PEFT would merge silently wrong or not at all."""
    for item in inputs:
        config = item.config
        if config.peft_type != "LORA":
            raise PecftError(
                f"{item.path}: a {config.peft_type} adapter; merge-adapters merges LoRA "
                "adapters only."
            )
        if combining and getattr(config, "use_dora", False):
            raise PecftError(
                f"{item.path}: a DoRA adapter; PEFT's combinations ignore DoRA's magnitude "
                "vectors, so the merge would be wrong. Fold it into the base alone with "
                "--into-base."
            )
        if combining and getattr(config, "target_parameters", None):
            raise PecftError(
                f"{item.path}: the adapter targets parameters (target_parameters); PEFT cannot "
                "combine such adapters."
            )
    bases = {item.config.base_model_name_or_path for item in inputs}
    if len(bases) > 1:
        listed = "; ".join(f"{i.name}: {i.config.base_model_name_or_path}" for i in inputs)
        raise PecftError(
            f"the adapters were trained on different base models ({listed}); merge only "
            "adapters of one base model."
        )
    ranks = {item.rank for item in inputs}
    if combining and method in ONE_RANK and len(ranks) > 1:
        listed = ", ".join(f"{i.name} r={i.rank}" for i in inputs)
        raise PecftError(
            f"--method {method} combines A and B matrices of one common rank, but the adapters "
            f"have different ranks ({listed}); use cat (exact) or svd (with --rank)."
        )


def default_weights(kind: str, count: int) -> list[float]:
    """Per-task LoRAs add up (their sum is the trained stack); whole-model stages average."""
    return [1.0 / count] * count if kind == "stages" else [1.0] * count


def check_out(out: Path, force: bool) -> None:
    """Refuse to replace anything but an earlier merge, and that only with --force."""
    if not out.exists():
        return
    earlier = out.is_dir() and (out / MERGE_FILE).is_file()
    if not force or not earlier:
        hint = (
            "pass --force to replace it"
            if earlier
            else "it is not an earlier merge, so pecft will not replace it"
        )
        raise PecftError(f"--out {out}: already exists; {hint}, or choose another --out.")


@dataclass
class MergeOptions:
    """How to merge: the method and its weights, density, rank and seed; which of a run's
    tasks; into an adapter or (`into_base`) a whole model; and whether to score the result."""

    method: str = "cat"
    tasks: list[str] | None = None
    weights: list[float] | None = None
    density: float | None = None
    rank: int | None = None
    seed: int = 0
    into_base: bool = False
    base: str | None = None
    force: bool = False
    evaluate: bool = False


def merge_adapters(
    sources: list[Path],
    out: Path,
    options: MergeOptions | None = None,
    *,
    trust_remote_code: bool = False,
    on_event: EventCallback = ignore,
) -> MergeResult:
    """Merge the adapters, write `out` (an adapter, or a whole model with `into_base`), and
    score it on the run's tasks when asked."""
    started = time.perf_counter()
    options = options or MergeOptions()
    out = out.resolve()
    inputs, run, kind = merge_inputs(sources, options.tasks)
    check_request(inputs, run, out, options)
    weights = options.weights or default_weights(kind, len(inputs))
    trained_on = base_of(inputs[0].path, options.base)
    section = ModelSection.model_validate(trained_on.model_dump() | {"quantization": "none"})
    on_event("status", {"message": f"loading base model {trained_on.path} (unquantized)"})
    tokenizer = load_tokenizer(section, trust_remote_code)
    model = PeftModel.from_pretrained(
        load_model(section, device(), trust_remote_code), inputs[0].path, adapter_name=input_name(0)
    )
    for index, item in enumerate(inputs[1:], start=1):
        model.load_adapter(item.path, adapter_name=input_name(index))
    name = input_name(0)
    if len(inputs) > 1:
        on_event("status", {"message": f"merging {len(inputs)} adapters with {options.method}"})
        name = combine(model, len(inputs), weights, options)
    rank = model.peft_config[name].r
    record = merge_record(inputs, run, kind, weights, rank, trained_on, options)
    runs.write_folder(out, partial(write_merged, model, name, tokenizer, record))
    del model  # the evaluation loads the result from disk, as a user would
    result = MergeResult(out, record)
    if options.evaluate and run is not None:
        score_merge(result, run, trust_remote_code, on_event)
        runs.write_json(out / MERGE_FILE, result.record)
    result.record["seconds"] = round(time.perf_counter() - started, 2)
    return result


def check_request(
    inputs: list[MergeInput], run: Path | None, out: Path, options: MergeOptions
) -> None:
    """Everything about the request that can be refused before a model is loaded."""
    combining = len(inputs) > 1
    if not combining and not options.into_base:
        raise PecftError(
            f"only one adapter ({inputs[0].path}); combining needs two or more. To fold one "
            "adapter into the base weights, add --into-base."
        )
    check_options(options.method, len(inputs), options.weights, options.density, options.rank)
    if not 0 <= options.seed <= MAX_SEED:
        raise PecftError(f"--seed {options.seed}: give a seed from 0 to {MAX_SEED}.")
    check_adapters(inputs, options.method, combining)
    if options.rank is not None and options.rank > sum(item.rank for item in inputs):
        raise PecftError(
            f"--rank {options.rank}: these adapters add up to an update of rank at most "
            f"{sum(item.rank for item in inputs)}; a higher rank adds only zeros."
        )
    check_out(out, options.force)
    if options.evaluate and run is None:
        raise PecftError(
            "--eval scores the result on a run's tasks, but these adapters do not come from a "
            "pecft run folder; leave out --eval, or merge from the run folder."
        )


def combine(model: PeftModel, count: int, weights: list[float], options: MergeOptions) -> str:
    """Add the combination of the model's `count` input adapters; returns its adapter name."""
    torch.manual_seed(options.seed)
    model.add_weighted_adapter(
        [input_name(i) for i in range(count)],
        weights,
        MERGED,
        combination_type=options.method,
        svd_rank=options.rank,
        density=options.density,
    )
    undo_rslora_rescale(model, MERGED)
    return MERGED


def merge_record(
    inputs: list[MergeInput],
    run: Path | None,
    kind: str,
    weights: list[float],
    rank: int,
    base: ModelSection,
    options: MergeOptions,
) -> dict[str, Any]:
    """merge.json: what was merged, how, and by which pecft."""
    combining = len(inputs) > 1
    return {
        "format_version": runs.FORMAT_VERSION,
        "pecft_version": __version__,
        "created_at": runs.now(),
        "inputs": [{"name": i.name, "path": str(i.path), "rank": i.rank} for i in inputs],
        "input_kind": kind,
        "run": str(run) if run else None,
        "method": options.method if combining else None,
        "weights": weights if combining else None,
        "density": options.density,
        "rank": rank,
        "seed": options.seed,
        "into_base": options.into_base,
        "base": base.model_dump(),
        "base_reloaded_unquantized": base.quantization.mode != "none" and options.into_base,
        "versions": runs.library_versions(),
    }


def input_name(index: int) -> str:
    return f"input{index + 1:02d}"


def undo_rslora_rescale(model: PeftModel, name: str) -> None:
    """PEFT's combined adapter already holds each input's scaling and sets alpha = r; with rsLoRA
    kept on it would be scaled again by sqrt(r). Turn rsLoRA off so the scale is exactly one."""
    config = model.peft_config[name]
    if not getattr(config, "use_rslora", False):
        return
    config.use_rslora = False
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and name in scaling:
            scaling[name] = 1.0


def write_merged(
    model: PeftModel, name: str, tokenizer: Any, record: dict[str, Any], folder: Path
) -> None:
    """The merged adapter, or with `into_base` the whole model it folds into, plus merge.json."""
    if record["into_base"]:
        plain = model.merge_and_unload(adapter_names=[name])
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        save_adapter(model, folder, name)
    runs.write_json(folder / MERGE_FILE, record)


def score_merge(
    result: MergeResult, run: Path, trust_remote_code: bool, on_event: EventCallback
) -> None:
    """Score the merged result on every task of its run, as a user would load it, and record
    the row in the run's eval/merges.csv next to the matrix."""
    saved = runs.open_run(run)
    folder = saved.folder
    recipe = load_recipe(folder.recipe)
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    on_event("status", {"message": f"scoring {result.out.name} on the run's tasks"})
    if result.record["into_base"]:
        section = ModelSection(path=str(result.out), dtype=recipe.model.dtype)
        model = load_model(section, device(), trust_remote_code)
    else:
        base = load_model(recipe.model, device(), trust_remote_code)
        model = PeftModel.from_pretrained(base, result.out)
    label = result.out.name
    tasks = [task.name for task in recipe.tasks]
    scores = []
    for section in recipe.tasks:
        data = load_task(section, recipe, tokenizer, train=False)
        began = time.perf_counter()
        scored = score_task(model, tokenizer, data, recipe.evaluation)
        runs.write_jsonl(folder.merge_predictions(label, data.name), scored.predictions)
        on_event("eval", scored.event(label, time.perf_counter() - began))
        scores.append(scored.score)
    rows: dict[str, list[float | None]] = {}
    if folder.merges.is_file():
        columns, old = runs.read_matrix(folder.merges, key="merge")
        if columns == tasks:
            rows = old
    rows[label] = list(scores)
    runs.write_matrix(folder.merges, tasks, rows, key="merge")
    result.tasks, result.scores = tasks, scores
    result.record["eval"] = {
        "tasks": tasks,
        "scores": scores,
        "mean": sum(scores) / len(scores),
    }
    if folder.matrix.is_file():
        result.last_stage = saved.last_stage(saved.matrix()[1])
