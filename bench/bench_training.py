"""Training throughput: pecft's task loop against a Hugging Face Trainer + PEFT baseline.

Both train the same LoRA (r=8, alpha 16, q_proj and v_proj, no dropout) on the same base model
(SmolLM2-135M-Instruct, or a random Llama of about 1B parameters with --model llama-1b), on the
same batches of the quickstart tasks (all four, whose lengths vary) in the same order, with the
same batch size, max length, AdamW settings, linear schedule and step count, one after the other
in this process. Tokens are the non-padding tokens of those batches, identical for both; the
mean training loss of each over all its steps (pecft's from its logs/train.jsonl, Trainer's
`training_loss`) is printed beside its speed, to show the two did the same work, and the
benchmark exits non-zero when they differ by more than --loss-tolerance (relative; 1% in
float32, 5% in bfloat16 by default).

    .venv/bin/python bench/bench_training.py --steps 40 --repeats 2
    .venv/bin/python bench/bench_training.py --strategies seq,olora,replay,ewc   # overhead

Prints tokens/s and seconds per step of each, the model FLOPs utilisation (MFU) of each, and
the ratio last. MFU counts 4 FLOPs per token per weight of the model's linear layers (forward,
and the backward pass to the activations; the frozen base gets no weight gradients), the work of
a padded step with logits everywhere, for both; it is measured against the peak of a large
matrix product timed here on the same device and dtype. With --strategies, it times pecft's step
on the second task for each strategy (where olora's orthogonality term, replay's extra examples
and EWC's penalty are active) against seq.

On a GPU (`--device cuda` is the default when one is present):

    python bench/bench_training.py --dtype bfloat16 --steps 40 --repeats 3
    python bench/bench_training.py --dtype bfloat16 --model llama-1b --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def quickstart_examples(max_length: int):
    """Every quickstart task's training examples, in task order, and the tokenizer."""
    from pecft_cli.model.load import load_tokenizer
    from pecft_cli.recipe.load import load_recipe
    from pecft_cli.training.preflight import preflight

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    tokenizer = load_tokenizer(recipe.model)
    tasks = preflight(recipe, tokenizer).tasks
    examples = [e for task in tasks for e in task.train if len(e) <= max_length]
    return recipe, tokenizer, tasks, examples


def base_model(recipe, name: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pecft_cli.model.load import load_model

    if name == "smollm2":
        return load_model(recipe.model.model_copy(update={"dtype": dtype_name(dtype)}), device)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.requires_grad_(False)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]


def lora_section():
    from pecft_cli.recipe.sections import LoraSection

    return LoraSection(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"])


def training_section(args):
    from pecft_cli.recipe.sections import TrainingSection

    return TrainingSection(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-3,
        max_length=args.max_length,
        log_every=args.steps,
        checkpoint_every=0,
    )


def order(count: int, seed: int) -> list[int]:
    """The example order pecft's loader draws for this seed: the DataLoader takes one number
    from its generator when an epoch starts, then the RandomSampler a permutation."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(count, generator=generator).tolist()


def step_features(examples: list, args) -> list[dict[str, list[int]]]:
    """The features of every timed step's batch, in pecft's loader order (epochs repeat it)."""
    from pecft_cli.data.batch import training_features

    ordered = [training_features(examples[i]) for i in order(len(examples), args.seed)]
    needed = args.steps * args.batch_size
    return (ordered * (needed // len(ordered) + 1))[:needed]


def time_pecft(model_factory, recipe, tokenizer, examples, args, strategy_name="seq", index=0):
    """One pecft stage (StageTrainer) on a fresh LoRA; wall time and tokens."""
    from accelerate import Accelerator

    from pecft_cli.events import ignore
    from pecft_cli.parallel.preemption import StopSignals
    from pecft_cli.recipe.sections import StrategySection
    from pecft_cli.runfolder.layout import RunFolder
    from pecft_cli.runfolder.state import RunState
    from pecft_cli.strategies import build_strategy
    from pecft_cli.strategies.base import Stage
    from pecft_cli.training.context import RunContext
    from pecft_cli.training.stage import StagePlan, StageTrainer

    accelerator = Accelerator(cpu=args.device == "cpu")
    replay = {"per_task": 64} if strategy_name == "replay" else {}
    section = StrategySection(name=strategy_name, options=replay)
    names = ["first", "second"]
    strategy, buffer = build_strategy(section, lora_section(), names, seed=0)
    stages = strategy.stages()
    torch.manual_seed(0)
    model = strategy.attach(model_factory())
    with tempfile.TemporaryDirectory() as scratch:
        folder = RunFolder(Path(scratch))
        (folder.root / "logs").mkdir()
        state = RunState(name="bench", seed=args.seed, strategy=strategy_name, tasks=names)
        ctx = RunContext(
            accelerator=accelerator,
            recipe=recipe,
            tokenizer=tokenizer,
            tasks=[],
            strategy=strategy,
            replay=buffer,
            folder=folder,
            state=state,
            stop=StopSignals(),
            on_event=ignore,
            model=model,
        )
        half = len(examples) // 2
        first, second = examples[:half], examples[half:]
        if index == 1:  # let the strategy see a finished first task (Fisher, buffer, frozen LoRA)
            strategy.before_stage(model, stages[0])
            strategy.after_stage(model, stages[0], first[:64])
            if buffer is not None:
                buffer.remember(0, first[:64])
        own = second if index else examples
        strategy.before_stage(model, stages[index], own)
        memory = {"strategy": strategy.state_dict(), "replay": {}}
        plan = StagePlan(
            stage=Stage(index, "bench", (index,)),
            total=1,
            first_step=0,
            examples=buffer.mix(own) if buffer is not None else own,
            settings=training_section(args),
            seed=args.seed,
            memory=memory,
        )
        started = time.perf_counter()
        summary = StageTrainer(ctx, plan).train()
        seconds = time.perf_counter() - started
        loss = mean_logged_loss(folder.train_log, "bench", args.steps)
    model.unload()  # the base model again, for the next measurement
    return {"seconds": seconds, "tokens": summary["tokens"], "steps": args.steps, "loss": loss}


def mean_logged_loss(train_log: Path, task: str, steps: int) -> float:
    """The stage's mean loss over all its steps, from logs/train.jsonl: each line holds the
    mean over the steps since the line before (step 1 is a line of its own), so each is
    weighted by the steps it covers. Trainer's `training_loss` is the same mean, which the
    summary's first_loss (step 1 alone) and last_loss (the last window) are not."""
    total = covered = 0
    for line in train_log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["task"] != task:
            continue
        total += entry["loss"] * (entry["step"] - covered)
        covered = entry["step"]
    if covered != steps:
        sys.exit(f"FAIL: {train_log} logs {covered} of the {steps} steps of stage '{task}'")
    return total / covered


def time_trainer(model_factory, tokenizer, examples, args) -> dict:
    """The same steps through transformers' Trainer on a PEFT model; wall time of train()."""
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from pecft_cli.strategies.base import lora_config

    features = step_features(examples, args)
    needed = len(features)

    class SameOrder(Trainer):
        def _get_train_sampler(self, *unused):
            return SequentialSampler(self.train_dataset)

    torch.manual_seed(0)
    model = get_peft_model(model_factory(), lora_config(lora_section()))
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            logging_steps=args.steps,
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            dataloader_num_workers=0,
            use_cpu=args.device == "cpu",
            bf16=args.dtype == "bfloat16",
            disable_tqdm=True,
        )
        trainer = SameOrder(
            model=model,
            args=arguments,
            train_dataset=features,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
        started = time.perf_counter()
        loss = trainer.train().training_loss
        seconds = time.perf_counter() - started
    model.unload()
    tokens = 0
    for start in range(0, needed, args.batch_size):
        tokens += sum(len(f["input_ids"]) for f in features[start : start + args.batch_size])
    return {"seconds": seconds, "tokens": tokens, "steps": args.steps, "loss": loss}


def linear_weights(model: torch.nn.Module) -> int:
    """Weights of the model's linear layers (the language-model head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def peak_flops(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matrix product on this device and dtype: the MFU's yardstick."""
    size = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 50 if device.startswith("cuda") else 10
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def batch_shape(examples: list, args) -> str:
    """What the timed steps hold: real tokens, the positions a padded batch computes, and the
    positions whose logits the loss needs."""
    from pecft_cli.data.batch import answer_tokens

    features = step_features(examples, args)
    needed = len(features)
    real = padded = answers = 0
    for start in range(0, needed, args.batch_size):
        batch = features[start : start + args.batch_size]
        real += sum(len(f["input_ids"]) for f in batch)
        padded += max(len(f["input_ids"]) for f in batch) * len(batch)
        answers += sum(answer_tokens(f) for f in batch)
    return (
        f"{real} real tokens, {padded} positions when padded ({1 - real / padded:.0%} padding), "
        f"{answers} answer tokens"
    )


def report(name: str, runs_: list[dict], flops_per_token: float, peak: float) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs_)
    tokens = runs_[0]["tokens"]
    row = {
        "name": name,
        "tokens_per_s": tokens / seconds,
        "s_per_step": seconds / runs_[0]["steps"],
        "tokens": tokens,
    }
    mfu = row["tokens_per_s"] * flops_per_token / peak
    print(
        f"{name:<24} {row['tokens_per_s']:>10.1f} tok/s {row['s_per_step']:>8.3f} s/step "
        f"MFU {mfu:6.1%}  mean loss {runs_[0]['loss']:.4f} ({tokens} tokens, median of "
        f"{len(runs_)})",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=["smollm2", "llama-1b"], default="smollm2")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strategies", default=None, help="time these strategies against seq")
    parser.add_argument(
        "--loss-tolerance",
        type=float,
        default=None,
        help="largest relative gap between the two mean losses (default 1%% in float32, "
        "5%% in bfloat16); beyond it the benchmark fails",
    )
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.loss_tolerance is None:
        args.loss_tolerance = 0.01 if args.dtype == "float32" else 0.05
    dtype = getattr(torch, args.dtype)
    recipe, tokenizer, _, examples = quickstart_examples(args.max_length)
    cached = base_model(recipe, args.model, dtype, args.device)

    def fresh():
        return cached

    flops_per_token = 4 * linear_weights(cached)
    peak = peak_flops(args.device, dtype)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"model {args.model} ({args.dtype}, {device}), {len(examples)} examples, batch "
        f"{args.batch_size}, {args.steps} steps, torch threads {torch.get_num_threads()}; "
        f"measured {args.dtype} matmul peak {peak / 1e12:.2f} TFLOP/s",
        flush=True,
    )
    if args.strategies:
        rows = {}
        for name in ["seq", *[s for s in args.strategies.split(",") if s != "seq"]]:
            timed = [
                time_pecft(fresh, recipe, tokenizer, examples, args, name, 1)
                for _ in range(args.repeats)
            ]
            rows[name] = report(f"pecft {name} (task 2)", timed, flops_per_token, peak)
        for name, row in rows.items():
            print(f"{name} step time / seq: {row['s_per_step'] / rows['seq']['s_per_step']:.3f}")
        return
    print(f"the timed steps: {batch_shape(examples, args)}", flush=True)
    pecft, trainer = [], []
    for _ in range(args.repeats):
        pecft.append(time_pecft(fresh, recipe, tokenizer, examples, args))
        trainer.append(time_trainer(fresh, tokenizer, examples, args))
    assert pecft[0]["tokens"] == trainer[0]["tokens"], (pecft[0]["tokens"], trainer[0]["tokens"])
    ours = report("pecft task loop", pecft, flops_per_token, peak)
    theirs = report("Trainer + PEFT", trainer, flops_per_token, peak)
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    print(f"ratio (pecft tokens/s / Trainer tokens/s): {ratio:.2f}")
    check_same_work(pecft[0]["loss"], trainer[0]["loss"], args.loss_tolerance)


def check_same_work(ours: float, theirs: float, tolerance: float) -> None:
    """Exit non-zero unless both loops' mean losses agree within `tolerance` (relative to
    Trainer's): otherwise they did not train on the same batches the same way, and the
    speeds above compare different work."""
    gap = abs(ours - theirs) / abs(theirs)
    verdict = "agree" if gap <= tolerance else "DISAGREE"
    print(
        f"mean loss: pecft {ours:.4f}, Trainer {theirs:.4f}, relative gap {gap:.2%} "
        f"(tolerance {tolerance:.2%}): {verdict}",
        flush=True,
    )
    if gap > tolerance:
        sys.exit(
            f"FAIL: pecft's mean training loss {ours:.4f} differs from Trainer's {theirs:.4f} "
            f"by {gap:.2%}, beyond the {tolerance:.2%} tolerance: the two loops did not do the "
            "same work, so their timings are not comparable."
        )


if __name__ == "__main__":
    main()
