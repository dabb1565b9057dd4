"""Routing accuracy of every router kind and feature on every stream, without training.

A router reads only the base model's features (adapters off), so how well it routes does not
depend on what the LoRAs learnt: each stream's training prompts (at most 256 a task, as in
training) build the router over all its tasks, and each task's eval prompts are routed; the
accuracy is the share sent to their own task at the last stage, the hardest (every task known).
One forward pass per prompt and pooling gives every layer.

    .venv/bin/python bench/bench_routing.py                          # every stream
    .venv/bin/python bench/bench_routing.py --streams blind --layers 6,15,-1
    .venv/bin/python bench/bench_routing.py --streams blind --rules   # other rules (sklearn)
    .venv/bin/python bench/bench_routing.py --recorded 5              # the tables, from records

Prints a table (stream x kind x pooling x layer) and writes it as JSON to
bench/records/routing/<stream>.json, with the seconds per prompt of the feature pass and the
bytes each router keeps. `--rules` instead compares other classification rules on the same
features (the Gaussian router at other shrinkages, Ledoit-Wolf shrinkage, k nearest neighbours,
logistic regression; scikit-learn, which the dev install brings with lm-eval) and writes
bench/records/routing/<stream>-rules.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pecft_cli.data.tasks import load_task  # noqa: E402
from pecft_cli.model.load import load_model, load_tokenizer  # noqa: E402
from pecft_cli.recipe.load import load_recipe  # noqa: E402
from pecft_cli.serving.features import (  # noqa: E402
    POOLINGS,
    Features,
    affixes,
    all_features,
    default_layer,
)  # noqa: E402
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


def pooled(model: Any, tokenizer: Any, train: list, evals: list, pooling: str) -> tuple:
    """Every layer's pooled features of each task's training and eval prompts, and the
    seconds they took."""
    started = time.perf_counter()
    prefix, suffix = affixes(train[0])  # as a router learns them from its first task
    spec = Features(None, pooling, prefix, suffix)
    train_f = [all_features(model, p, tokenizer.pad_token_id, spec) for p in train]
    eval_f = [all_features(model, p, tokenizer.pad_token_id, spec) for p in evals]
    return train_f, eval_f, time.perf_counter() - started


def opened(stream: str) -> tuple:
    """The stream's model, tokenizer, task names and prompts."""
    recipe = load_recipe(ROOT / "bench" / "recipes" / f"{stream}.yaml")
    tokenizer = load_tokenizer(recipe.model)
    names, train, evals = stream_prompts(recipe, tokenizer)
    return load_model(recipe.model), tokenizer, names, train, evals


def measure(stream: str, layers: list[int] | None, shrinkage: float) -> dict:
    """Every kind x pooling x layer on one stream."""
    model, tokenizer, names, train, evals = opened(stream)
    rows, seconds, count = [], 0.0, 0
    for pooling in POOLINGS:
        train_f, eval_f, took = pooled(model, tokenizer, train, evals, pooling)
        seconds += took
        count += sum(map(len, train)) + sum(map(len, evals))
        depth = train_f[0].shape[1]
        for layer in layers if layers is not None else range(depth):
            for kind in ("prototype", "gaussian"):
                spec = Features(layer, pooling)
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
        "default_layer": default_layer(model),
        "shrinkage": shrinkage,
        "seconds_per_prompt": round(seconds / count, 5),
        "bytes_per_task": {"prototype": 4 * d, "gaussian": 8 * (d + d * d)},
        "rows": rows,
        "machine": torch.__config__.parallel_info().splitlines()[0],
    }


def gaussian_accuracy(shrinkage: float, train: list[torch.Tensor], evals: list) -> float:
    """The Gaussian router's routing accuracy at one shrinkage."""
    names = [str(i) for i in range(len(train))]
    return accuracy(GaussianRouter(Features(0), shrinkage), train, evals, names)


def fitted_accuracy(estimator: Any, train: list[torch.Tensor], evals: list) -> float:
    """A scikit-learn classifier's routing accuracy, fitted on every task's training features."""
    x, x_eval = torch.cat(train).double().numpy(), torch.cat(evals).double().numpy()
    y = [i for i, t in enumerate(train) for _ in range(len(t))]
    y_eval = [i for i, t in enumerate(evals) for _ in range(len(t))]
    return float(estimator.fit(x, y).score(x_eval, y_eval))


def rules() -> dict[str, Callable[[list[torch.Tensor], list[torch.Tensor]], float]]:
    """Other rules over the same features, each as a routing accuracy: the Gaussian router at
    other shrinkages, sklearn's Ledoit-Wolf shrinkage, and two that keep every training feature
    (k nearest neighbours by cosine, logistic regression on standardised features)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    found = {f"gaussian s={s}": partial(gaussian_accuracy, s) for s in (0.01, 0.03, 0.1, 0.3, 0.6)}
    estimators = {
        "lda ledoit-wolf": LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
        "5-nn cosine": KNeighborsClassifier(5, metric="cosine"),
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
    }
    return found | {name: partial(fitted_accuracy, e) for name, e in estimators.items()}


def compare(stream: str, layers: list[int] | None) -> dict:
    """Each of `rules` at the default layer and the last (or `layers`), last token and mean."""
    model, tokenizer, names, train, evals = opened(stream)
    chosen = layers or [default_layer(model), -1]
    rows = []
    for pooling in ("last", "mean"):
        train_f, eval_f, _ = pooled(model, tokenizer, train, evals, pooling)
        for layer in chosen:
            picked = [t[:, layer] for t in train_f], [e[:, layer] for e in eval_f]
            for rule, routed in rules().items():
                score = routed(*picked)
                rows.append({"rule": rule, "pooling": pooling, "layer": layer, "routing": score})
                print(f"{stream:11s} {rule:20s} {pooling:4s} layer {layer:3d}: {100 * score:5.1f}%")
    return {"stream": stream, "eval_prompts": sum(map(len, evals)), "rows": rows}


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


def rules_markdown(records: list[dict]) -> str:
    """The rules table: a row per rule, pooling and layer, a column per recorded stream."""
    streams = [record["stream"] for record in records]
    cells = {
        (row["rule"], row["pooling"], row["layer"], record["stream"]): row["routing"]
        for record in records
        for row in record["rows"]
    }
    keys = list(
        dict.fromkeys(
            (row["rule"], row["pooling"], row["layer"]) for r in records for row in r["rows"]
        )
    )
    lines = [
        "| rule | pooling | layer | " + " | ".join(streams) + " |",
        "|---|---|---|" + "---|" * len(streams),
    ]
    for rule, pooling, layer in keys:
        values = [cells.get((rule, pooling, layer, s)) for s in streams]
        text = ["-" if v is None else f"{100 * v:.1f}" for v in values]
        lines.append(f"| {rule} | {pooling} | {layer} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--layers", default=None, help="comma-separated; default every layer")
    parser.add_argument("--shrinkage", type=float, default=0.1)
    parser.add_argument(
        "--recorded", type=int, metavar="EVERY", help="print the recorded tables; measure nothing"
    )
    parser.add_argument("--rules", action="store_true", help="compare other rules instead")
    args = parser.parse_args()
    names = args.streams.split(",")
    if args.recorded:
        for suffix, show in (
            ("", lambda r: markdown(r, args.recorded)),
            ("-rules", rules_markdown),
        ):
            found = [RECORDS / f"{name}{suffix}.json" for name in names]
            records = [json.loads(path.read_text()) for path in found if path.is_file()]
            if records:
                print(show(records) + "\n")
        return
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    RECORDS.mkdir(parents=True, exist_ok=True)
    for stream in names:
        if args.rules:
            record, path = compare(stream, layers), RECORDS / f"{stream}-rules.json"
        else:
            record, path = measure(stream, layers, args.shrinkage), RECORDS / f"{stream}.json"
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
