"""Run every continual-learning strategy over the benchmark streams and write docs/results.md.

    .venv/bin/python bench/run_strategies.py                                # everything
    .venv/bin/python bench/run_strategies.py --streams atlas --strategies seq,olora --seeds 0
    .venv/bin/python bench/run_strategies.py --streams quickstart --strategies olora,joint \
        --seeds 0 --sweep training.lr=3e-4,1e-3,3e-3             # a sweep, its own table
    .venv/bin/python bench/run_strategies.py --streams atlas --strategies replay \
        --sweep strategy.options.per_task=100 --set training.lr=3e-3  # a sweep at another lr

Each run is a plain `pecft train bench/recipes/<stream>.yaml --set ...` into
bench/runs/<stream>/<strategy>-seed<N>/. What the tables read of a completed run (run.json,
recipe.yaml, eval/matrix.csv, eval/metrics.json) is copied to bench/records/, which the
repository keeps; a run with a record is not trained again, so an interrupted benchmark
continues where it stopped, on this machine or another. `ceiling` is not a strategy: every
task trained alone from the base model with its own LoRA and scored with it (an oracle task
id), one one-task run per task. Tables give the mean and the spread (sample standard
deviation) over seeds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "bench" / "recipes"
PECFT = Path(sys.executable).parent / "pecft"
STREAMS = ("quickstart", "atlas", "blind")
CEILING = "ceiling"
RECORDED = ("run.json", "recipe.yaml", "eval/matrix.csv", "eval/metrics.json")

# Each strategy as recipe overrides on top of the stream recipe.
STRATEGIES: dict[str, list[str]] = {
    "seq": ["strategy.name=seq"],
    "ewc": ["strategy.name=ewc"],
    "lwf": ["strategy.name=lwf"],
    "replay": ["strategy.name=replay", "strategy.options.per_task=30"],
    "inclora": ["strategy.name=inclora"],
    "inclora+routing": ["strategy.name=inclora", "strategy.routing=prototype"],
    "olora": ["strategy.name=olora"],
    "olora+routing": ["strategy.name=olora", "strategy.routing=prototype"],
    "olora+replay": ["strategy.name=olora", "strategy.replay.per_task=30"],
    "inflora": ["strategy.name=inflora"],
    "separate+routing": ["strategy.name=separate", "strategy.routing=prototype"],
    "separate+arrow": ["strategy.name=separate", "strategy.routing=arrow"],
    "chain+routing": ["strategy.name=chain", "strategy.routing=prototype"],
    "chain+replay+routing": [
        "strategy.name=chain",
        "strategy.replay.per_task=30",
        "strategy.routing=prototype",
    ],
    "separate+gaussian": ["strategy.name=separate", "strategy.routing=gaussian"],
    "chain+replay+gaussian": [
        "strategy.name=chain",
        "strategy.replay.per_task=30",
        "strategy.routing=gaussian",
    ],
    "chain+replay+gaussian+fallback": [
        "strategy.name=chain",
        "strategy.replay.per_task=30",
        "strategy.routing=gaussian",
        "strategy.router.fallback=latest",
        "strategy.router.confident=0.99",
    ],
    "osf": ["strategy.name=osf", "training.lr=1e-4"],
    "joint": ["strategy.name=joint"],
    CEILING: [],
}
METRICS = ("acc", "bwt", "fwt", "forgetting", "learning_accuracy")
HEADER = (
    "strategy",
    "seeds",
    "ACC %",
    "BWT %",
    "FWT %",
    "forgetting %",
    "learning acc %",
    "routing acc %",
    "trainable",
    "wall time",
    "CPU time",
    "peak RSS",
)


def run_command(command: list[str]) -> int:
    print("$", shlex.join(command), flush=True)
    return subprocess.run(command, stdout=subprocess.DEVNULL).returncode


def stopped(folder: Path) -> bool:
    """Whether the run in folder was stopped on request and can resume."""
    state = folder / "run.json"
    return state.is_file() and json.loads(state.read_text())["status"] == "preempted"


def completed(folder: Path) -> bool:
    state = folder / "run.json"
    return state.is_file() and json.loads(state.read_text())["status"] == "completed"


@dataclass(frozen=True)
class Place:
    """Where runs go and their records are kept; `recorded_only` trains nothing."""

    runs: Path
    records: Path
    recorded_only: bool = False


def train(recipe: Path, overrides: list[str], folder: Path, record: Path) -> Path | None:
    """One `pecft train` into folder, unless its record exists; returns the record, or None
    when the run failed (its exit code and run.json say why; the benchmark goes on)."""
    if completed(record):
        return record
    if not completed(folder):
        command = [str(PECFT), "train", str(recipe)]
        for item in [*overrides, f"output_dir={folder}"]:
            command += ["--set", item]
        # A run stopped on request (exit 75) resumes from its checkpoint, unless pecft refuses
        # it (exit 2: a recipe another pecft version resolved differently); then it restarts.
        code = run_command(command) if stopped(folder) else 2
        if code == 2:
            code = run_command([*command, "--overwrite"])
        if code != 0:
            print(f"failed with exit code {code}: {folder}", flush=True)
            return None
    for name in RECORDED:
        (record / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, record / name)
    return record


def stream_tasks(stream: str) -> list[str]:
    recipe = yaml.safe_load((RECIPES / f"{stream}.yaml").read_text(encoding="utf-8"))
    return [task["name"] for task in recipe["tasks"]]


def one_task_recipes(stream: str, folder: Path) -> list[Path]:
    """The stream's recipe cut into one recipe per task, data paths made absolute."""
    recipe = RECIPES / f"{stream}.yaml"
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    paths = []
    for task in data["tasks"]:
        for split in ("train", "eval"):
            task[split] = str((recipe.parent / task[split]).resolve())
        one = {**data, "name": f"{stream}-{task['name']}", "tasks": [task]}
        path = folder / "recipes" / f"{task['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(one, sort_keys=False, allow_unicode=True), encoding="utf-8")
        paths.append(path)
    return paths


def run_once(stream: str, variant: Variant, seed: int, place: Place) -> list[Path]:
    """The records of one strategy (with its sweep setting) and seed: one, or one per task for
    the ceiling; none when a run failed, or is not recorded and `place` trains nothing."""
    name = f"{variant.folder}-seed{seed}"
    folder, record = place.runs / stream / name, place.records / stream / name
    if place.recorded_only:
        tasks = stream_tasks(stream) if variant.strategy == CEILING else []
        wanted = [record / task for task in tasks] or [record]
        return wanted if all(completed(one) for one in wanted) else []
    extra = [*variant.overrides, f"seed={seed}"]
    if variant.strategy == CEILING:
        recipes = one_task_recipes(stream, folder)
        done = [train(r, extra, folder / r.stem, record / r.stem) for r in recipes]
    else:
        overrides = [*STRATEGIES[variant.strategy], *extra]
        done = [train(RECIPES / f"{stream}.yaml", overrides, folder, record)]
    return [] if None in done else [path for path in done if path is not None]


def short_setting(item: str) -> str:
    """`strategy.options.lambda1=0.1` as `lambda1=0.1`: the key's last part, the value whole."""
    key, value = item.split("=", 1)
    return f"{key.rsplit('.', 1)[-1]}={value}"


@dataclass(frozen=True)
class Variant:
    """A strategy as one table row: with no sweep, the strategy itself; in a sweep, the
    strategy at one value of the swept recipe key."""

    strategy: str
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        setting = " ".join(short_setting(item) for item in self.overrides)
        return f"{self.strategy} {setting}".strip()

    @property
    def folder(self) -> str:
        return self.label.replace(" ", "_")


def variants(strategies: list[str], sweep: str | None, fixed: list[str]) -> list[Variant]:
    """Every row to run: each strategy, or each strategy at each value of `key=v1,v2,...`,
    with the `fixed` overrides (`key=v`) on every row."""
    if sweep is None:
        return [Variant(strategy, tuple(fixed)) for strategy in strategies]
    key, values = sweep.split("=", 1)
    return [
        Variant(s, (f"{key}={value}", *fixed)) for s in strategies for value in values.split(",")
    ]


def spread(values: list[float | None], form: str = ".1f", scale: float = 100) -> str:
    """`mean ± sd` over seeds (percent by default); `-` where the metric does not apply."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return "-"
    mean = format(statistics.fmean(present), form)
    if len(present) < 2:
        return mean
    return f"{mean} ± {statistics.stdev(present):.{form[-2]}f}"


def seed_figures(folders: list[Path]) -> dict[str, float | None]:
    """One seed's figures; the ceiling's folders are its one-task runs, averaged."""
    metrics = [json.loads((f / "eval/metrics.json").read_text()) for f in folders]
    states = [json.loads((f / "run.json").read_text()) for f in folders]
    if len(folders) > 1:
        acc = statistics.fmean(m["acc"] for m in metrics)
        figures: dict[str, float | None] = dict.fromkeys(METRICS)
        figures.update(acc=acc, learning_accuracy=acc)
    else:
        figures = {key: metrics[0][key] for key in METRICS}
    routing = states[-1].get("routing_accuracy") or {}
    figures["routing"] = list(routing.values())[-1] if routing else None
    figures["trainable"] = max(s["trainable_parameters"] for s in states)
    figures["wall"] = sum(s["timings"]["wall_seconds"] for s in states)
    cpu = [s["timings"].get("cpu_seconds") for s in states]
    figures["cpu"] = None if None in cpu else sum(cpu)
    figures["peak"] = max(s["peak_memory_mb"]["cpu_rss"] for s in states) / 1024
    return figures


def summarize(strategy: str, seeds: list[list[Path]]) -> list[str]:
    """One table row: metrics over seeds, trainable parameters, times, peak memory."""
    figures = [seed_figures(folders) for folders in seeds]
    column = lambda key: [f[key] for f in figures]  # noqa: E731
    signed = {"bwt", "fwt"}
    cells = [strategy, str(len(seeds))]
    cells += [spread(column(k), "+.1f" if k in signed else ".1f") for k in METRICS]
    cells.append(spread(column("routing")))
    cells.append(f"{max(column('trainable')):,}")
    cells.append(spread(column("wall"), ".0f", 1) + " s")
    cpu = spread(column("cpu"), ".0f", 1)
    cells.append(cpu + " s" if cpu != "-" else cpu)
    cells.append(f"{max(column('peak')):.2f} GiB")
    return cells


def task_row(strategy: str, seeds: list[list[Path]]) -> list[str]:
    """Per task (all but the last): its score just after learning it, its lowest score at any
    later stage, and its final score; means over seeds, in percent. Empty for runs whose
    stages are not its tasks (joint, the ceiling)."""
    cells: dict[str, list[tuple[float, float, float]]] = {}
    for folders in seeds:
        if len(folders) > 1:
            return []
        lines = (folders[0] / "eval/matrix.csv").read_text().splitlines()
        header, rows = lines[0].split(",")[1:], [line.split(",") for line in lines[1:]]
        matrix = {row[0]: [float(v) for v in row[1:]] for row in rows}
        stages = json.loads((folders[0] / "run.json").read_text())["stages"]
        if stages != header:
            return []
        for j, task in enumerate(header[:-1]):
            later = [matrix[stage][j] for stage in stages[j + 1 :]]
            cells.setdefault(task, []).append((matrix[task][j], min(later), later[-1]))
    row = [strategy]
    for values in cells.values():
        learned, lowest, final = (100 * statistics.fmean(v[k] for v in values) for k in range(3))
        row.append(f"{learned:.0f} → {lowest:.0f} → {final:.0f}")
    return row


def table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machines(versions: list[dict]) -> str:
    """The CPUs the table's runs ran on, as their run.json records them."""
    named = sorted({f"{v['cpu']} ({v['cpu_count']} cores)" for v in versions if "cpu" in v})
    unnamed = sum("cpu" not in v for v in versions)
    if unnamed:
        named.append(f"{unnamed} of {len(versions)} runs recorded before run.json named the CPU")
    return "; ".join(named)


def libraries(versions: list[dict]) -> str:
    """Each library's version in the table's runs; where runs differ, every version with the
    number of runs that used it."""
    parts = []
    for name in ("pecft-cli", "torch", "transformers", "peft"):
        used = [str(v.get(name)) for v in versions]
        distinct = sorted(set(used))
        if len(distinct) > 1:
            distinct = [f"{one} ({used.count(one)} of {len(used)} runs)" for one in distinct]
        parts.append(f"{name.removesuffix('-cli')} {' or '.join(distinct)}")
    return ", ".join(parts)


def stream_section(
    stream: str,
    rows: list[list[str]],
    per_task: list[list[str]],
    command: str,
    records: Path,
    used: list[Path],
) -> str:
    """The generated part of docs/results.md for one stream."""
    tasks = stream_tasks(stream)
    versions = [json.loads((f / "run.json").read_text())["versions"] for f in used]
    lines = [
        f"Tasks in order: {', '.join(tasks)}. Machines: {machines(versions)}; "
        f"{libraries(versions)} (from the runs' run.json).",
        "",
        "```bash",
        command,
        "```",
        "",
        *table(HEADER, rows),
    ]
    per_task = [row for row in per_task if row]
    if per_task:
        lines += [
            "",
            "Where the forgetting happens: for each task but the last, its score just after it "
            "was learned → its lowest score at any later stage → its final score (percent, "
            "means over seeds).",
            "",
            *table(["strategy", *tasks[:-1]], per_task),
        ]
    lines += ["", f"Run records: `{records.relative_to(ROOT)}/{stream}/<strategy>-seed<N>/`."]
    return "\n".join(lines)


def write_section(out: Path, stream: str, body: str) -> None:
    """Replace the stream's generated block in out (between its markers), keeping the rest."""
    begin, end = f"<!-- results:{stream} -->", f"<!-- /results:{stream} -->"
    text = out.read_text(encoding="utf-8") if out.is_file() else "# Strategy benchmark\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Stream: {stream}\n\n{block}\n"
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "runs")
    parser.add_argument("--records", type=Path, default=ROOT / "bench" / "records")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="run and print; leave the doc")
    parser.add_argument(
        "--sweep", help="KEY=V1,V2,...: each strategy at each value of a recipe key"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V",
        help="a recipe override on every run, named in each row (repeatable)",
    )
    parser.add_argument(
        "--recorded", action="store_true", help="write the tables from the records; train nothing"
    )
    args = parser.parse_args(argv)
    strategies, streams = args.strategies.split(","), args.streams.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES] + [
        s for s in streams if s not in STREAMS
    ]
    if unknown:
        parser.error(
            f"unknown {unknown}; strategies: {', '.join(STRATEGIES)}; streams: {', '.join(STREAMS)}"
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    place = Place(args.runs.resolve(), args.records.resolve(), args.recorded)
    for stream in streams:
        rows, per_task, used = [], [], []
        for variant in variants(strategies, args.sweep, args.set):
            folders = [run_once(stream, variant, seed, place) for seed in seeds]
            folders = [one for one in folders if one]
            if not folders:
                continue
            used += [one for seed in folders for one in seed]
            rows.append(summarize(variant.label, folders))
            per_task.append(task_row(variant.label, folders))
            print(stream, rows[-1], flush=True)
        options = ["--streams", stream, "--strategies", args.strategies, "--seeds", args.seeds]
        options += ["--sweep", args.sweep] if args.sweep else []
        options += [word for item in args.set for word in ("--set", item)]
        command = ".venv/bin/python bench/run_strategies.py " + shlex.join(options)
        if not args.no_write:
            block = stream if args.sweep is None else f"{stream} sweep {args.sweep.split('=')[0]}"
            block += "".join(f" set {item}" for item in args.set)
            section = (
                stream_section(stream, rows, per_task, command, place.records, used)
                if rows
                else "No run of this stream has completed yet."
            )
            write_section(args.results.resolve(), block, section)


if __name__ == "__main__":
    main()
