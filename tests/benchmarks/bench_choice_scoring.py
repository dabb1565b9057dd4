"""Throughput of pecft's choice scoring against lm-evaluation-harness's on identical work.

pecft scores multiple-choice tasks with its own code rather than calling the harness; this
measures what that buys: the quickstart's unicode_category eval set (60 examples, 5 choices),
scored by a freshly trained tiny adapter, timed after a warm-up call.

    .venv/bin/python tests/benchmarks/bench_choice_scoring.py --repeats 5 --batch-size 32

Three timings, each the median of --repeats calls:
- pecft: `score_task` on the tokenized task (what a pecft run spends per evaluation);
- lm-eval loglikelihood: the harness model's `loglikelihood` on the task's 300 requests
  (its tokenization and forward passes: the part that corresponds to pecft's);
- lm-eval simple_evaluate: a whole harness pass with the model already loaded (task and data
  loading, requests, scoring, metrics).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per scorer")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="pecft evaluation.batch_size and lm-eval batch_size",
    )
    args = parser.parse_args()
    if importlib.util.find_spec("lm_eval") is None:
        sys.exit("lm-eval is not installed: pip install -e '.[dev]'")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the agreement test's helpers

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import get_task_dict
    from test_lm_eval_agreement import (
        HARNESS_TASK,
        harness_manager,
        harness_model,
        harness_samples,
        load_pecft,
        pecft_predictions,
        train_adapter,
        write_harness_task,
    )

    with tempfile.TemporaryDirectory(prefix="bench-choice-") as scratch:
        folder = Path(scratch)
        print("training a tiny adapter ...", file=sys.stderr)
        recipe, adapter = train_adapter(folder)
        config = recipe.evaluation.model_copy(update={"batch_size": args.batch_size})
        model, tokenizer, data = load_pecft(recipe, adapter)
        task_folder = write_harness_task(recipe.tasks[0], folder / "harness")
        lm = harness_model(recipe, adapter, args.batch_size)
        task = get_task_dict([HARNESS_TASK], harness_manager(task_folder))[HARNESS_TASK]
        task.build_all_requests()
        requests = task.instances

        def harness_pass() -> object:
            return simple_evaluate(
                model=lm,
                tasks=[HARNESS_TASK],
                task_manager=harness_manager(task_folder),
                bootstrap_iters=0,
                log_samples=False,
            )

        timings = {
            "pecft score_task": median_seconds(
                lambda: pecft_predictions(model, tokenizer, data, config), args.repeats
            ),
            "lm-eval loglikelihood": median_seconds(
                lambda: lm.loglikelihood(requests, disable_tqdm=True), args.repeats
            ),
            "lm-eval simple_evaluate": median_seconds(harness_pass, args.repeats),
        }
        ours = pecft_predictions(model, tokenizer, data, config)
        theirs = harness_samples(lm, task_folder)

    examples = len(data.eval)
    print(
        f"{examples} examples x {len(recipe.tasks[0].choices)} choices, "
        f"batch size {args.batch_size}, {args.repeats} repeats (median), "
        f"torch threads {torch.get_num_threads()}"
    )
    for name, seconds in timings.items():
        print(f"{name:<24} {seconds:8.3f} s  {examples / seconds:8.1f} examples/s")
    pecft = timings["pecft score_task"]
    for name in ("lm-eval loglikelihood", "lm-eval simple_evaluate"):
        print(f"speed-up of pecft over {name}: {timings[name] / pecft:.2f}x")
    for label, key_ours, key_theirs in (
        ("acc", "correct", "acc"),
        ("acc_norm", "correct_norm", "acc_norm"),
    ):
        print(
            f"{label:<8} pecft {sum(p[key_ours] for p in ours) / examples:.4f}  "
            f"lm-eval {sum(s[key_theirs] for s in theirs) / examples:.4f}"
        )


if __name__ == "__main__":
    main()
