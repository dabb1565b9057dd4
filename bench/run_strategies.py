"""Run every continual-learning strategy over the benchmark stream and write docs/results.md.

    .venv/bin/python bench/run_strategies.py                      # all strategies, seeds 0 and 1
    .venv/bin/python bench/run_strategies.py --strategies seq,olora --seeds 0

Each run is a plain `pecft train bench/recipes/stream.yaml --set ...` into bench/runs/; a run
folder that already completed is reused, so an interrupted benchmark continues where it stopped.
The table reports the mean and the spread (sample standard deviation) over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "bench" / "recipes" / "stream.yaml"
PECFT = Path(sys.executable).parent / "pecft"

# Each strategy as recipe overrides on top of the stream recipe.
STRATEGIES: dict[str, list[str]] = {
    "seq": ["strategy.name=seq"],
    "ewc": ["strategy.name=ewc"],
    "replay": ["strategy.name=replay", "strategy.options.per_task=30"],
    "inclora": ["strategy.name=inclora"],
    "olora": ["strategy.name=olora"],
    "olora+replay": ["strategy.name=olora", "strategy.replay.per_task=30"],
    "joint": ["strategy.name=joint"],
}
METRICS = ("acc", "bwt", "fwt", "forgetting")
NOTES = "## Reading the numbers"  # written by hand; kept when the tables are rewritten


def run_once(strategy: str, seed: int, runs: Path) -> Path:
    """Train one strategy with one seed, unless a completed run is already there."""
    folder = runs / f"{strategy}-seed{seed}"
    state = folder / "run.json"
    if state.is_file() and json.loads(state.read_text())["status"] == "completed":
        return folder
    overrides = [*STRATEGIES[strategy], f"seed={seed}", f"output_dir={folder}"]
    command = [str(PECFT), "train", str(RECIPE), "--overwrite"]
    for item in overrides:
        command += ["--set", item]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder


def spread(values: list[float | None], form: str = ".1f", scale: float = 100) -> str:
    """`mean ± sd` over seeds (percent by default); `-` where the metric does not apply."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return "-"
    mean = format(statistics.fmean(present), form)
    if len(present) < 2:
        return mean
    return f"{mean} ± {statistics.stdev(present):.{form[-2]}f}"


def summarize(strategy: str, folders: list[Path]) -> dict[str, str]:
    """One table row: metrics over seeds, trainable parameters, wall time, peak memory."""
    metrics = [json.loads((f / "eval/metrics.json").read_text()) for f in folders]
    states = [json.loads((f / "run.json").read_text()) for f in folders]
    row = {"strategy": strategy, "seeds": str(len(folders))}
    for key in METRICS:
        row[key] = spread([m[key] for m in metrics], "+.1f" if key in ("bwt", "fwt") else ".1f")
    row["trainable"] = f"{states[0]['trainable_parameters']:,}"
    row["wall"] = spread([s["timings"]["wall_seconds"] for s in states], ".0f", 1) + " s"
    peak = max(s["peak_memory_mb"]["cpu_rss"] for s in states)
    row["peak"] = f"{peak / 1024:.2f} GiB"
    return row


def task_rows(strategy: str, folders: list[Path]) -> dict[str, str]:
    """Per task (all but the last): its score just after learning it, its lowest score at any
    later stage, and its final score; means over seeds, in percent."""
    cells: dict[str, list[tuple[float, float, float]]] = {}
    for folder in folders:
        lines = (folder / "eval/matrix.csv").read_text().splitlines()
        header, rows = lines[0].split(",")[1:], [line.split(",") for line in lines[1:]]
        matrix = {row[0]: [float(v) for v in row[1:]] for row in rows}
        stages = json.loads((folder / "run.json").read_text())["stages"]
        if stages != header:
            return {}
        for j, task in enumerate(header[:-1]):
            later = [matrix[stage][j] for stage in stages[j + 1 :]]
            cells.setdefault(task, []).append((matrix[task][j], min(later), later[-1]))
    row = {"strategy": strategy}
    for task, values in cells.items():
        learned, lowest, final = (100 * statistics.fmean(v[k] for v in values) for k in range(3))
        row[task] = f"{learned:.0f} → {lowest:.0f} → {final:.0f}"
    return row


def cpu_name() -> str:
    """The CPU model, for the record of where a benchmark ran."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_results(
    rows: list[dict[str, str]],
    per_task: list[dict[str, str]],
    command: str,
    out: Path,
    runs: Path,
) -> None:
    first = next(runs.glob("*/run.json"))
    versions = json.loads(first.read_text())["versions"]
    header = [
        "strategy",
        "seeds",
        "ACC %",
        "BWT %",
        "FWT %",
        "forgetting %",
        "trainable",
        "wall time",
        "peak RSS",
    ]
    lines = [
        "# Strategy benchmark",
        "",
        "SmolLM2-135M-Instruct (fp32, CPU), LoRA r=8 on q_proj/v_proj, over four tasks in this",
        "order: numeric_value (generation), lowercase (generation), unicode_category (five-way",
        "choice), currency_code (generation); 2 epochs per task. Metrics in percent, mean ± sample",
        "standard deviation over seeds; `trainable` is the largest number of LoRA weights trained",
        "in one task; wall time is the whole run (training and every evaluation); peak RSS is the",
        "largest resident memory of one run. Machine: "
        f"{cpu_name()}, {os.cpu_count()} CPU cores; pecft "
        f"{versions.get('pecft-cli')}, torch {versions.get('torch')}, transformers "
        f"{versions.get('transformers')}, peft {versions.get('peft')} (from the runs' run.json).",
        "",
        "Reproduce with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            row["strategy"],
            row["seeds"],
            *(row[k] for k in METRICS),
            row["trainable"],
            row["wall"],
            row["peak"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["seeds"] == "1" for row in rows):
        lines += ["", "Rows from a single seed show no spread; they are one run, not an average."]
    per_task = [row for row in per_task if len(row) > 1]
    if per_task:
        tasks = [key for key in per_task[0] if key != "strategy"]
        lines += [
            "",
            "Where the forgetting happens: for each task but the last, its score just after it "
            "was learned → its lowest score at any later stage → its final score (percent, "
            "means over seeds).",
            "",
            "| strategy | " + " | ".join(tasks) + " |",
            "|" + "---|" * (len(tasks) + 1),
        ]
        lines += ["| " + " | ".join(row.values()) + " |" for row in per_task]
    lines += ["", f"Run folders: `{runs.relative_to(ROOT)}/<strategy>-seed<N>/`.", ""]
    kept = ""
    if out.is_file() and NOTES in out.read_text(encoding="utf-8"):
        kept = NOTES + out.read_text(encoding="utf-8").split(NOTES, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + ("\n" + kept if kept else ""), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, per_task = [], []
    for strategy in strategies:
        folders = [run_once(strategy, seed, args.runs.resolve()) for seed in seeds]
        rows.append(summarize(strategy, folders))
        per_task.append(task_rows(strategy, folders))
        print(rows[-1], flush=True)
    command = ".venv/bin/python bench/run_strategies.py " + shlex.join(
        ["--strategies", args.strategies, "--seeds", args.seeds]
    )
    write_results(rows, per_task, command, args.results.resolve(), args.runs.resolve())


if __name__ == "__main__":
    main()
