"""Peak memory of one training task: float base, 4-bit (NF4) base, gradient checkpointing.

    .venv/bin/python bench/bench_memory.py

Each configuration is a separate `pecft train bench/recipes/one_task.yaml` process (one task,
one epoch, scored on 20 examples); the figures are the peaks that run.json records: resident
memory of the process, and CUDA memory allocated when a GPU ran it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PECFT = Path(sys.executable).parent / "pecft"
CONFIGS = {
    "float32": [],
    "4-bit NF4": ["--set", "model.quantization=4bit"],
    "float32 + checkpointing": ["--set", "training.gradient_checkpointing=true"],
}


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, extra in CONFIGS.items():
            out = Path(scratch) / f"run{len(rows)}"
            command = [str(PECFT), "train", str(ROOT / "bench/recipes/one_task.yaml")]
            command += ["--set", f"output_dir={out}", *extra]
            print("$", shlex.join(command), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            state = json.loads((out / "run.json").read_text())
            rows[name] = (state["peak_memory_mb"], state["training"]["numeric_value"])
    print(f"{'base':<24} {'peak RSS':>10} {'peak CUDA':>10} {'tok/s':>8}")
    for name, (peak, training) in rows.items():
        cuda = f"{peak['cuda']:.0f} MB" if "cuda" in peak else "-"
        print(f"{name:<24} {peak['cpu_rss']:>7.0f} MB {cuda:>10} {training['tokens_per_s']:>8.1f}")
    base = rows["float32"][0]["cpu_rss"]
    for name in list(CONFIGS)[1:]:
        print(f"{name} / float32 peak RSS: {rows[name][0]['cpu_rss'] / base:.2f}")


if __name__ == "__main__":
    main()
