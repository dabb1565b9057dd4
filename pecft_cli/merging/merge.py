"""Merging adapters with PEFT: several per-task LoRAs into one, or an adapter into the base weights.

Every combination is PEFT's `add_weighted_adapter`; this module picks the inputs, checks up
front what PEFT would accept but get wrong (mixed ranks for a one-rank method, DoRA or non-LoRA
adapters, adapters of different base models), writes the result in one rename, and can score
the result on the run's tasks so that it can be read against the run's last matrix row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from pecft_cli import __version__
from pecft_cli.data.tasks import load_task
from pecft_cli.errors import PecftError
from pecft_cli.events import EventCallback, ignore
from pecft_cli.merging.request import MergeInput, MergeOptions, check_request
from pecft_cli.model.adapters import save_adapter
from pecft_cli.model.artifacts import (
    MERGE_FILE,
    adapter_config,
    adapter_run,
    applied,
    base_of,
    is_run,
)
from pecft_cli.model.load import load_model, load_tokenizer
from pecft_cli.parallel.distributed import device
from pecft_cli.recipe.sections import ModelSection
from pecft_cli.runfolder.atomic import write_folder, write_json, write_jsonl
from pecft_cli.runfolder.layout import FORMAT_VERSION
from pecft_cli.runfolder.matrix import read_matrix, write_matrix
from pecft_cli.runfolder.saved import SavedRun, open_run, pick
from pecft_cli.runfolder.state import library_versions, now
from pecft_cli.scoring.scorer import score_task

MERGED = "merged"


@dataclass
class MergeResult:
    out: Path
    record: dict[str, Any]
    tasks: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    last_stage: tuple[str, list[float | None]] | None = None


def merge_inputs(
    sources: list[Path], tasks: list[str] | None
) -> tuple[list[MergeInput], SavedRun | None, str]:
    """The adapters to merge, the run they come from (if one), and what they are.

    A run folder gives each task's own LoRA where the strategy trained one per task (inclora,
    olora), otherwise the adapter of each stage; explicit folders are taken as given.
    """
    if len(sources) == 1 and is_run(sources[0].resolve()):
        root = sources[0].resolve()
        saved = open_run(root)
        own = {
            task: saved.folder.task_lora(i, task)
            for i, task in enumerate(saved.tasks)
            if (saved.folder.task_lora(i, task) / "adapter_config.json").is_file()
        }
        kind, found = ("task_loras", own) if own else ("stages", saved.adapters)
        if not found:
            raise PecftError(f"{root}: the run has no saved adapters yet; nothing to merge.")
        chosen = pick(tasks, list(found), "task", root)
        return [MergeInput(n, found[n], adapter_config(found[n])) for n in chosen], saved, kind
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
    owner = owners.pop() if len(owners) == 1 else None
    return inputs, open_run(owner) if owner is not None else None, "adapters"


def default_weights(kind: str, count: int) -> list[float]:
    """Per-task LoRAs add up (their sum is the trained stack); whole-model stages average."""
    return [1.0 / count] * count if kind == "stages" else [1.0] * count


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
    if run is not None and not options.base:
        trained_on = run.recipe.model
    else:
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
    write_folder(out, partial(write_merged, model, name, tokenizer, record))
    del model  # the evaluation loads the result from disk, as a user would
    result = MergeResult(out, record)
    if options.evaluate and run is not None:
        score_merge(result, run, trust_remote_code, on_event)
        write_json(out / MERGE_FILE, result.record)
    result.record["seconds"] = round(time.perf_counter() - started, 2)
    return result


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
    run: SavedRun | None,
    kind: str,
    weights: list[float],
    rank: int,
    base: ModelSection,
    options: MergeOptions,
) -> dict[str, Any]:
    """merge.json: what was merged, how, and by which pecft."""
    combining = len(inputs) > 1
    return {
        "format_version": FORMAT_VERSION,
        "pecft_version": __version__,
        "created_at": now(),
        "inputs": [{"name": i.name, "path": str(i.path), "rank": i.rank} for i in inputs],
        "input_kind": kind,
        "run": str(run.folder.root) if run else None,
        "method": options.method if combining else None,
        "weights": weights if combining else None,
        "density": options.density,
        "rank": rank,
        "seed": options.seed,
        "into_base": options.into_base,
        "base": base.model_dump(),
        "base_reloaded_unquantized": base.quantization.mode != "none" and options.into_base,
        "versions": library_versions(),
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
    write_json(folder / MERGE_FILE, record)


def score_merge(
    result: MergeResult, saved: SavedRun, trust_remote_code: bool, on_event: EventCallback
) -> None:
    """Score the merged result on every task of its run, as a user would load it, and record
    the row in the run's eval/merges.csv next to the matrix."""
    folder, recipe = saved.folder, saved.recipe
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    on_event("status", {"message": f"scoring {result.out.name} on the run's tasks"})
    if result.record["into_base"]:
        section = ModelSection(path=str(result.out), dtype=recipe.model.dtype)
        model = load_model(section, device(), trust_remote_code)
    else:
        base = load_model(recipe.model, device(), trust_remote_code)
        model = applied(base, result.out)
    label = result.out.name
    tasks = [task.name for task in recipe.tasks]
    scores = []
    for section in recipe.tasks:
        data = load_task(section, recipe, tokenizer, train=False)
        began = time.perf_counter()
        scored = score_task(model, tokenizer, data, recipe.evaluation)
        write_jsonl(folder.merge_predictions(label, data.name), scored.predictions)
        on_event("eval", scored.event(label, time.perf_counter() - began))
        scores.append(scored.score)
    rows: dict[str, list[float | None]] = {}
    if folder.merges.is_file():
        columns, old = read_matrix(folder.merges, key="merge")
        if columns == tasks:
            rows = old
    rows[label] = list(scores)
    write_matrix(folder.merges, tasks, rows, key="merge")
    result.tasks, result.scores = tasks, scores
    result.record["eval"] = {
        "tasks": tasks,
        "scores": scores,
        "mean": sum(scores) / len(scores),
    }
    if folder.matrix.is_file():
        result.last_stage = saved.last_stage(saved.matrix()[1])
