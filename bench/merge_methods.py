"""Merge a run's adapters with every PEFT method, score each result, and write docs/merging.md.

    .venv/bin/python bench/merge_methods.py runs/quickstart bench/runs/quickstart/olora-seed0

Each merge is a plain `pecft merge-adapters RUN --out bench/merges/<run>/<method> --eval`; the
table puts every method's scores under the run's last matrix row (what the merge should keep).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PECFT = Path(sys.executable).parent / "pecft"
DENSITY = "0.5"
# The generated part of the page lies between these; the hand-written text around them is kept.
BEGIN = "<!-- merges: written by bench/merge_methods.py -->"
END = "<!-- /merges -->"

# Each merge as merge-adapters options; the pruning methods keep half of the weights.
MERGES: dict[str, list[str]] = {
    "cat": ["--method", "cat"],
    "svd": ["--method", "svd"],
    "linear": ["--method", "linear"],
    "ties": ["--method", "ties", "--density", DENSITY],
    "ties_svd": ["--method", "ties_svd", "--density", DENSITY],
    "dare_linear": ["--method", "dare_linear", "--density", DENSITY],
    "dare_ties": ["--method", "dare_ties", "--density", DENSITY],
    "magnitude_prune": ["--method", "magnitude_prune", "--density", DENSITY],
    "cat-into-base": ["--method", "cat", "--into-base"],
}


def merge(run: Path, name: str, out_root: Path) -> dict:
    command = [str(PECFT), "merge-adapters", str(run), "--out", str(out_root / name)]
    command += [*MERGES[name], "--eval", "--force", "--json"]
    print("$", shlex.join(command), flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(run: Path, results: dict[str, dict]) -> list[str]:
    first = next(iter(results.values()))
    tasks = first["tasks"]
    stage, last = first["last_stage"]["stage"], first["last_stage"]["scores"]
    last_mean = sum(last) / len(last)
    record = first["merge"]
    inputs = ", ".join(i["name"] for i in record["inputs"])
    lines = [
        f"### `{run.relative_to(ROOT)}` (strategy {strategy(run)})",
        "",
        f"Inputs: {record['input_kind']} ({inputs}); default weights "
        f"{', '.join(f'{w:g}' for w in record['weights'])}.",
        "",
        "| result | rank | size | " + " | ".join(tasks) + " | mean | vs last stage |",
        "|" + "---|" * (len(tasks) + 5),
        f"| after {stage} (the run) | - | - | "
        + " | ".join(pct(s) for s in last)
        + f" | {pct(last_mean)} | - |",
    ]
    for name, result in results.items():
        scores = result["scores"]
        mean = sum(scores) / len(scores)
        what = "model" if result["merge"]["into_base"] else str(result["merge"]["rank"])
        lines.append(
            f"| {name} | {what} | {size_mb(Path(result['out'])):.1f} MB | "
            + " | ".join(pct(s) for s in scores)
            + f" | {pct(mean)} | {100 * (mean - last_mean):+.1f} |"
        )
    return lines + [""]


def strategy(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["strategy"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--merges", default=",".join(MERGES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "merges")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "merging.md")
    args = parser.parse_args(argv)
    names = args.merges.split(",")
    lines = [
        BEGIN,
        "Every PEFT combination method applied to a run's adapters by `pecft merge-adapters`, each",
        "result scored on the run's tasks (`--eval`) and set under the run's last matrix row.",
        f"Pruning methods keep a fraction {DENSITY} of each adapter's weights (`--density`);",
        "DARE uses `--seed 0`. Scores in percent; size is the merged adapter's safetensors file.",
        "",
        "Reproduce with:",
        "",
        "```bash",
        ".venv/bin/python bench/merge_methods.py "
        + " ".join(str(r.resolve().relative_to(ROOT)) for r in args.runs),
        "```",
        "",
    ]
    for run in args.runs:
        run = run.resolve()
        results = {name: merge(run, name, args.out / run.name) for name in names}
        lines += table(run, results)
    lines.append(END)
    write_page(args.results, lines)
    print("\n".join(lines))


def write_page(path: Path, block: list[str]) -> None:
    """Replace the generated block of the page, keeping the hand-written text around it; a page
    without one gets a title and the block."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        page = head + "\n".join(block) + rest.split(END, 1)[1]
    else:
        page = "\n".join(["# Merging adapters", "", *block, ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
