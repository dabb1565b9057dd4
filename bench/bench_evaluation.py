"""Evaluation throughput: pecft's scoring against a per-example loop and lm-evaluation-harness.

One adapter (24 LoRA steps of the quickstart's unicode_category task on SmolLM2-135M-Instruct,
fp32) scores 60 eval examples three ways, one after the other in this process:

- choice, unicode_category (5 one-token choices), the same data with two-token choices
  (" letter character", ...) and with O-LoRA's prompt layout (task, data set, instruction and
  options ahead of the input, as recipes/benchmarks/ write them): pecft's `score_task`, also
  with `fold_adapters: false`; a loop that runs prompt + choice through the model once per
  choice; lm-eval's `loglikelihood` on the task's 300 requests (the part of the harness that
  corresponds to pecft's scoring) and a whole `simple_evaluate` pass;
- exact_match, numeric_value (greedy, up to 6 new tokens, stop at a newline), plain and with
  an instruction ahead: pecft's `score_task`, also unfolded; a loop that calls `generate` on
  one example at a time; lm-eval's `generate_until` on the same requests.

    .venv/bin/python bench/bench_evaluation.py --repeats 3

Each timing is the median of --repeats calls after an untimed warm-up (one call for the slow
per-example loops). Accuracy is printed for every scorer: the speed-ups only count where the
answers are the same. Each table ends with a floor: the time of the matrix products that every
real token needs (the linear layers at every prompt and generated token, the head where a
next token is read) at the float32 matmul peak measured here, and each scorer's time over it:
no scorer that computes the same products in float32 can be faster, so lm-eval's time over the
floor bounds what any such scorer can gain over lm-eval.
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
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the lm-eval agreement test's helpers
sys.path.insert(0, str(ROOT / "bench"))  # the training benchmark's matmul peak


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed(call: Callable[[], float]) -> tuple[float, float]:
    """Seconds and result of one call: for the slow per-example loops, where noise is small."""
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def loop_choices(model: Any, examples: list) -> float:
    """Accuracy of a per-choice loop: prompt + choice through the model, one sequence at a time."""
    correct = 0
    with torch.inference_mode():
        for example in examples:
            sums = []
            for choice in example.choice_ids:
                ids = torch.tensor([example.prompt_ids + choice])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                start = len(example.prompt_ids) - 1
                sums.append(sum(float(logprobs[start + k, t]) for k, t in enumerate(choice)))
            correct += max(range(len(sums)), key=sums.__getitem__) == example.label
    return correct / len(examples)


def loop_generate(model: Any, tokenizer: Any, examples: list, config: Any) -> float:
    """Exact-match accuracy of a per-example greedy `generate` loop."""
    from pecft_cli.scoring.scorer import cut_at_stop, normalize_answer

    correct = 0
    with torch.inference_mode():
        for example in examples:
            output = model.generate(
                input_ids=torch.tensor([example.prompt_ids]),
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=config.stop,
                tokenizer=tokenizer,
            )
            new = output[0, len(example.prompt_ids) :]
            answer = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), config.stop)
            correct += normalize_answer(answer) == normalize_answer(example.target)
    return correct / len(examples)


Row = tuple[str, float, float]  # scorer, seconds, accuracy


def floor_seconds(model: Any, prompts: list[list[int]], generated: int, peak: float) -> float:
    """The least time of any scorer that computes the same products in this precision: the
    model's linear layers over every real prompt token and every generated token, the head
    once per prompt and per generated token, all at the measured matrix-product peak."""
    head = model.get_output_embeddings()
    body = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and "lora_" not in name
    )
    tokens = sum(len(p) for p in prompts)
    flops = 2 * (body * (tokens + generated) + head.weight.numel() * (len(prompts) + generated))
    return flops / peak


def unfolded(config: Any) -> Any:
    return config.model_copy(update={"fold_adapters": False})


def choice_rows(
    variant: str, recipe: Any, adapter: Path, folder: Path, repeats: int, peak: float
) -> tuple[list[Row], float]:
    """Every choice scorer on one variant of the unicode_category task."""
    from lm_eval import simple_evaluate
    from test_lm_eval_agreement import (
        HARNESS_TASK,
        harness_manager,
        harness_model,
        harness_requests,
        harness_samples,
        instructed,
        load_pecft,
        multi_token_choices,
        pecft_predictions,
        write_harness_task,
    )

    recipe = recipe.model_copy(deep=True)
    if variant.startswith("two-token"):
        multi_token_choices(recipe.tasks[0])
    if "instruction" in variant:
        instructed(recipe.tasks[0])
    config = recipe.evaluation
    model, tokenizer, data = load_pecft(recipe, adapter)
    task_folder = write_harness_task(recipe.tasks[0], folder / variant.replace(" ", "-"))
    lm = harness_model(recipe, adapter, config.batch_size)
    requests = harness_requests(task_folder, HARNESS_TASK)
    ours = pecft_predictions(model, tokenizer, data, config)
    harness = sum(s["acc"] for s in harness_samples(lm, task_folder)) / len(data.eval)

    def harness_pass() -> object:
        return simple_evaluate(
            model=lm,
            tasks=[HARNESS_TASK],
            task_manager=harness_manager(task_folder),
            bootstrap_iters=0,
            log_samples=False,
        )

    accuracy = sum(p["correct"] for p in ours) / len(ours)
    live = unfolded(config)
    continued = sum(len(ids) - 1 for e in data.eval for ids in e.choice_ids or [])
    floor = floor_seconds(model, [e.prompt_ids for e in data.eval], continued, peak)
    return [
        (
            "pecft score_task",
            median_seconds(lambda: pecft_predictions(model, tokenizer, data, config), repeats),
            accuracy,
        ),
        (
            "pecft, fold_adapters: false",
            median_seconds(lambda: pecft_predictions(model, tokenizer, data, live), repeats),
            accuracy,
        ),
        ("per-choice loop", *timed(lambda: loop_choices(model, data.eval))),
        (
            "lm-eval loglikelihood",
            median_seconds(lambda: lm.loglikelihood(requests, disable_tqdm=True), repeats),
            harness,
        ),
        ("lm-eval simple_evaluate", median_seconds(harness_pass, repeats), harness),
    ], floor


def generation_rows(
    recipe: Any, adapter: Path, folder: Path, repeats: int, peak: float
) -> tuple[list[Row], float]:
    """Every exact-match scorer on the numeric_value task."""
    from test_lm_eval_agreement import (
        harness_model,
        harness_requests,
        load_pecft,
        write_harness_generate_task,
    )

    from pecft_cli.scoring.scorer import cut_at_stop, normalize_answer, score_task

    config = recipe.evaluation
    model, tokenizer, data = load_pecft(recipe, adapter)
    name = "pecft_numeric_value"
    # The prompt without its trailing space, the context pecft generates after (see there).
    task_folder = write_harness_generate_task(recipe.tasks[0], config, folder / "generate", name)
    lm = harness_model(recipe, adapter, config.batch_size)
    requests = harness_requests(task_folder, name)
    answers = lm.generate_until(requests, disable_tqdm=True)
    harness = sum(
        normalize_answer(cut_at_stop(answer, config.stop)) == normalize_answer(example.target)
        for answer, example in zip(answers, data.eval, strict=True)
    ) / len(data.eval)
    live = unfolded(config)
    written = sum(  # a lower bound: the stop token each answer ends with is not counted
        len(tokenizer(p["prediction"], add_special_tokens=False)["input_ids"])
        for p in score_task(model, tokenizer, data, config).predictions
    )
    floor = floor_seconds(model, [e.prompt_ids for e in data.eval], written, peak)
    return [
        (
            "pecft score_task",
            median_seconds(lambda: score_task(model, tokenizer, data, config), repeats),
            score_task(model, tokenizer, data, config).score,
        ),
        (
            "pecft, fold_adapters: false",
            median_seconds(lambda: score_task(model, tokenizer, data, live), repeats),
            score_task(model, tokenizer, data, live).score,
        ),
        (
            "per-example generate loop",
            *timed(lambda: loop_generate(model, tokenizer, data.eval, config)),
        ),
        (
            "lm-eval generate_until",
            median_seconds(lambda: lm.generate_until(requests, disable_tqdm=True), repeats),
            harness,
        ),
    ], floor


def print_table(title: str, examples: int, rows: list[Row], floor: float) -> None:
    print(f"\n{title}: {examples} examples")
    for name, seconds, accuracy in rows:
        speed = examples / seconds
        print(f"{name:<28} {seconds:8.3f} s {speed:8.1f} examples/s  acc {accuracy:.4f}")
    ours = rows[0][1]
    for name, seconds, _ in rows[1:]:
        print(f"speed-up of pecft over {name}: {seconds / ours:.2f}x")
    print(f"floor (the real tokens' matrix products at the matmul peak): {floor:.3f} s")
    for name, seconds, _ in rows:
        if name.startswith(("pecft", "lm-eval")):
            print(f"{name} over the floor: {seconds / floor:.2f}x")


CHOICE_VARIANTS = (
    "one-token choices",
    "two-token choices",
    "one-token choices, O-LoRA instruction",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per scorer")
    parser.add_argument("--metrics", default="choice,exact_match", help="which scorers to time")
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    if importlib.util.find_spec("lm_eval") is None:
        sys.exit("lm-eval is not installed: pip install -e '.[dev]'")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    from bench_training import peak_flops
    from test_lm_eval_agreement import instructed, quickstart_task, train_adapter
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        folder = Path(scratch)
        print("training a 24-step adapter ...", file=sys.stderr, flush=True)
        recipe, adapter = train_adapter(folder)
        peak = peak_flops("cpu", torch.float32)
        print(
            f"SmolLM2-135M-Instruct fp32 + LoRA, batch size {recipe.evaluation.batch_size}, "
            f"median of {args.repeats}, torch threads {torch.get_num_threads()}, "
            f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s"
        )
        for variant in CHOICE_VARIANTS if "choice" in metrics else ():
            rows, floor = choice_rows(variant, recipe, adapter, folder, args.repeats, peak)
            print_table(f"choice, unicode_category, 5 {variant}", 60, rows, floor)
        for variant in ("plain", "instruction") if "exact_match" in metrics else ():
            generation = quickstart_task(recipe, "numeric_value", 6)
            if variant == "instruction":
                instructed(generation.tasks[0])
            rows, floor = generation_rows(generation, adapter, folder, args.repeats, peak)
            title = f"exact_match, numeric_value, up to 6 new tokens, {variant} prompts"
            print_table(title, 40, rows, floor)


if __name__ == "__main__":
    main()
