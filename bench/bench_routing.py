"""Routing accuracy of every router kind and feature on every stream, without training.

A router reads only the base model's features (adapters off), so how well it routes does not
depend on what the LoRAs learnt: each stream's training prompts (at most 256 a task, as in
training) build the router over all its tasks, and each task's eval prompts are routed; the
accuracy is the share sent to their own task at the last stage, the hardest (every task known).
One forward pass per prompt and pooling gives every layer.

    .venv/bin/python bench/bench_routing.py                          # every stream
    .venv/bin/python bench/bench_routing.py --streams blind --layers 6,15,-1

Prints a table (stream x kind x pooling x layer) and writes it as JSON to
bench/records/routing/<stream>.json, with the seconds per prompt of the feature pass and the
bytes each router keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pecft_cli.data.tasks import load_task  # noqa: E402
from pecft_cli.model.load import load_model, load_tokenizer  # noqa: E402
from pecft_cli.recipe.load import load_recipe  # noqa: E402
from pecft_cli.serving.features import POOLINGS, Features, affixes, all_features  # noqa: E402
from pecft_cli.serving.routed import ROUTER_EXAMPLES  # noqa: E402
from pecft_cli.serving.router import GaussianRouter, PrototypeRouter, route  # noqa: E402

STREAMS = ("quickstart", "atlas", "blind")
RECORDS = ROOT / "bench" / "records" / "routing"


def stream_prompts(
    recipe: Any, tokenizer: Any
) -> tuple[list[str], list[list[list[int]]], list[list[list[int]]]]:
    """The stream's task names, each task's training prompts (as training's router reads
    them) and its eval prompts."""
    tasks = [load_task(section, recipe, tokenizer) for section in recipe.tasks]
    train = [[e.prompt_ids for e in task.train][:ROUTER_EXAMPLES] for task in tasks]
    evals = [[e.prompt_ids for e in task.eval] for task in tasks]
    return [task.name for task in tasks], train, evals


def accuracy(
    router: Any, train: list[torch.Tensor], evals: list[torch.Tensor], names: list[str]
) -> float:
    """The share of eval prompts the router, built from every task's training features, sends
    to their own task."""
    for name, vectors in zip(names, train, strict=True):
        router.add(name, router.totals(vectors))
    hits = total = 0
    for index, vectors in enumerate(evals):
        picks, _ = route(router, vectors)
        hits += sum(pick == index for pick in picks)
        total += len(picks)
    return hits / total


def measure(stream: str, layers: list[int] | None, shrinkage: float) -> dict:
    """Every kind x pooling x layer on one stream."""
    recipe = load_recipe(ROOT / "bench" / "recipes" / f"{stream}.yaml")
    tokenizer = load_tokenizer(recipe.model)
    names, train, evals = stream_prompts(recipe, tokenizer)
    model = load_model(recipe.model)
    rows, seconds, count = [], 0.0, 0
    for pooling in POOLINGS:
        started = time.perf_counter()
        prefix, suffix = affixes(train[0])  # as a router learns them from its first task
        spec = Features(-1, pooling, prefix, suffix)
        train_f = [all_features(model, p, tokenizer.pad_token_id, spec) for p in train]
        eval_f = [all_features(model, p, tokenizer.pad_token_id, spec) for p in evals]
        seconds += time.perf_counter() - started
        count += sum(map(len, train)) + sum(map(len, evals))
        depth = train_f[0].shape[1]
        for layer in layers if layers is not None else range(depth):
            for kind in ("prototype", "gaussian"):
                spec = Features(layer, pooling, prefix, suffix)
                router = (
                    GaussianRouter(spec, shrinkage) if kind == "gaussian" else PrototypeRouter(spec)
                )
                picked = [t[:, layer] for t in train_f], [e[:, layer] for e in eval_f]
                score = accuracy(router, *picked, names)
                rows.append({"kind": kind, "pooling": pooling, "layer": layer, "routing": score})
                print(f"{stream:11s} {kind:9s} {pooling:4s} layer {layer:3d}: {100 * score:5.1f}%")
    d = train_f[0].shape[-1]
    return {
        "stream": stream,
        "tasks": names,
        "eval_prompts": sum(map(len, evals)),
        "hidden_size": d,
        "layers": depth - 1,
        "shrinkage": shrinkage,
        "seconds_per_prompt": round(seconds / count, 5),
        "bytes_per_task": {"prototype": 4 * d, "gaussian": 8 * (d + d * d)},
        "rows": rows,
        "machine": torch.__config__.parallel_info().splitlines()[0],
    }


def markdown(records: list[dict], every: int) -> str:
    """The routing table of the recorded streams: a row per kind, pooling and layer (every
    `every`-th layer and the last), a column per stream, and the best row of each stream."""
    streams = [record["stream"] for record in records]
    cells = {
        (row["kind"], row["pooling"], row["layer"], record["stream"]): row["routing"]
        for record in records
        for row in record["rows"]
    }
    depth = max(record["layers"] for record in records)
    shown = sorted({*range(0, depth + 1, every), depth})
    lines = [
        "| router | pooling | layer | " + " | ".join(streams) + " |",
        "|---|---|---|" + "---|" * len(streams),
    ]
    for kind in ("prototype", "gaussian"):
        for pooling in POOLINGS:
            for layer in shown:
                values = [cells.get((kind, pooling, layer, s)) for s in streams]
                text = ["-" if v is None else f"{100 * v:.1f}" for v in values]
                lines.append(f"| {kind} | {pooling} | {layer} | " + " | ".join(text) + " |")
    for record in records:
        best = max(record["rows"], key=lambda row: row["routing"])
        lines.append(
            f"\nBest on {record['stream']}: {best['kind']}, {best['pooling']}, layer "
            f"{best['layer']}: {100 * best['routing']:.1f}% of {record['eval_prompts']} eval "
            f"prompts ({record['seconds_per_prompt'] * 1000:.0f} ms a prompt for the features)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--layers", default=None, help="comma-separated; default every layer")
    parser.add_argument("--shrinkage", type=float, default=0.1)
    parser.add_argument(
        "--recorded", type=int, metavar="EVERY", help="print the recorded table; measure nothing"
    )
    args = parser.parse_args()
    if args.recorded:
        names = args.streams.split(",")
        found = [RECORDS / f"{name}.json" for name in names if (RECORDS / f"{name}.json").is_file()]
        print(markdown([json.loads(path.read_text()) for path in found], args.recorded))
        return
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    RECORDS.mkdir(parents=True, exist_ok=True)
    for stream in args.streams.split(","):
        record = measure(stream, layers, args.shrinkage)
        path = RECORDS / f"{stream}.json"
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
