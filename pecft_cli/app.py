"""The `pecft` command line: parse, call the library, render. Nothing else lives here.

Exit codes: 0 success, 2 bad input (recipe, data, model or run folder; one paragraph on stderr,
no traceback), 3 training diverged (NaN or infinite gradients), 4 a process of a multi-process
run died, 75 stopped on request (SIGTERM/SIGUSR1) with a checkpoint to resume from, 1 anything
else.
"""

from __future__ import annotations

import csv
import errno
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.text import Text

from pecft_cli import __version__
from pecft_cli.console import TrainProgress, err, out
from pecft_cli.errors import Diverged, PecftError, Preempted, RankDied, bounded, short, short_text
from pecft_cli.launch import launched_rank
from pecft_cli.runs import Timings
from pecft_cli.tables import (
    comparison_table,
    matrix_table,
    merges_table,
    metrics_table,
    routing_table,
)

if TYPE_CHECKING:
    from pecft_cli.recipe import Recipe

app = typer.Typer(
    name="pecft",
    help="Parameter-efficient continual fine-tuning: LoRA task by task, with an evaluation matrix.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BAD_INPUT = 2
DIVERGED = 3  # the loss went NaN or infinite; nothing of that step was kept
RANK_DIED = 4  # a process of a multi-process run died; the rest were stopped
PREEMPTED = 75  # EX_TEMPFAIL: try again later; the run resumes from its checkpoint

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable)."),
]


TrustOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let a model run its own Python code (its recipe must set trust_remote_code too).",
    ),
]


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]


def reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn bad input into one paragraph on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except PecftError as exc:
            fail(str(exc), BAD_INPUT)
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            fail(unwritable(exc), BAD_INPUT)

    return wrapper


def fail(message: str, code: int) -> NoReturn:
    """Print one bounded paragraph on the main process and exit with `code`."""
    if is_main_process():
        err.print(Text(f"error: {bounded(message)}", style="red"), soft_wrap=True)
    raise typer.Exit(code) from None


UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def unwritable(exc: OSError) -> str:
    """One paragraph for a disk that refuses a write: full, over quota, read-only, no access."""
    where = exc.filename or "the output folder"
    return (
        f"cannot write {where}: {exc.strerror}. Every file pecft writes is put in place whole "
        "(written under a temporary name, then renamed), so what was written before stays "
        "intact; free space or choose a writable folder, then run the same command again (a "
        "stopped training run resumes from its last checkpoint)."
    )


def quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of pecft's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported, so set it first
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.callback(invoke_without_command=True)
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"pecft {__version__}")
        raise typer.Exit()


@app.command()
@reports_errors
def validate(
    recipe: RecipeArg,
    set_: SetOption = None,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Check a recipe and its data and show each task's first example as the model sees it."""
    quiet_libraries()
    from pecft_cli.model import load_tokenizer
    from pecft_cli.preflight import preflight
    from pecft_cli.recipe import output_dir
    from pecft_cli.recipe_file import load_recipe

    parsed = load_recipe(recipe, set_)
    tokenizer = load_tokenizer(parsed.model, trust_remote_code)
    checked = preflight(parsed, tokenizer, trust_remote_code=trust_remote_code)
    tasks, memory = checked.tasks, checked.memory
    if as_json:
        document = {
            "valid": True,
            "name": parsed.name,
            "strategy": parsed.strategy.name,
            "output_dir": str(output_dir(parsed)),
            "memory": {
                "lower_bound_bytes": memory.total,
                "weights_bytes": memory.weights,
                "lora_bytes": memory.lora,
                "activation_bytes": memory.activations,
                "capacity_bytes": memory.capacity,
            },
            "tasks": [
                {
                    "name": task.name,
                    "metric": task.metric,
                    "train_rows": task.train_rows,
                    "train_too_long": task.too_long,
                    "eval_rows": task.eval_rows,
                    "eval_scored": len(task.eval),
                    "first_prompt": short_text(tokenizer.decode(task.train[0].prompt_ids), 1000),
                    "first_target": short_text(tokenizer.decode(task.train[0].target_ids), 1000),
                }
                for task in tasks
            ],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    out.print(
        f"[bold]{parsed.name}[/]: {len(tasks)} tasks, strategy {parsed.strategy.name}, "
        f"output {output_dir(parsed)}\nmemory: {memory.describe()}",
        highlight=False,
    )
    for index, task in enumerate(tasks, start=1):
        skipped = f" ({task.too_long} longer than max_length, skipped)" if task.too_long else ""
        limited = f" (scoring {len(task.eval)})" if len(task.eval) < task.eval_rows else ""
        out.print(
            f"\n[bold]{index}. {task.name}[/]  metric {task.metric}  "
            f"train {task.train_rows} rows{skipped}  eval {task.eval_rows} rows{limited}"
        )
        out.print(
            f"   train: {task.sources['train']}\n   eval:  {task.sources['eval']}", highlight=False
        )
        first = task.train[0]
        out.print("   first example (the loss covers the target only; tokens marked ⟦ ⟧):")
        out.print(f"   prompt: {short(tokenizer.decode(first.prompt_ids), 200)}", highlight=False)
        out.print(f"   target: {short(tokenizer.decode(first.target_ids), 200)}", highlight=False)
        out.print(example_tokens(tokenizer, first.prompt_ids, first.target_ids))
        if first.choices:
            spoken = [tokenizer.decode(ids) for ids in first.choice_ids or []]
            out.print(f"   choices: {spoken}", highlight=False)
    out.print("\n[green]valid[/]")


SHOWN_TOKENS = 48  # of a long prompt, its end; of a long target, its start


def example_tokens(tokenizer: Any, prompt_ids: list[int], target_ids: list[int]) -> Text:
    """Prompt and target tokens, each token visible, the target bracketed and highlighted."""
    text = Text("   " + ("… " if len(prompt_ids) > SHOWN_TOKENS else ""))
    for piece in tokenizer.convert_ids_to_tokens(prompt_ids[-SHOWN_TOKENS:]):
        text.append(piece, style="dim")
        text.append("·", style="dim")
    text.append("⟦", style="bold")
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(target_ids[:SHOWN_TOKENS])):
        text.append(("·" if i else "") + piece, style="bold green")
    text.append("⟧", style="bold")
    return text


@app.command()
@reports_errors
def train(
    recipe: RecipeArg,
    set_: SetOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the output folder.")
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes", help="Train with N processes (GPUs; gloo ranks on a CPU host)."
        ),
    ] = 1,
    fsdp: Annotated[
        bool,
        typer.Option(
            "--fsdp",
            help="With --num-processes: shard the base model across the processes (FSDP2).",
        ),
    ] = False,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Train the recipe's tasks in order; write adapters, the evaluation matrix and metrics.

    Running the same command on an unfinished run resumes it; on a finished one it says so.
    """
    quiet_libraries()
    from pecft_cli.recipe_file import load_recipe
    from pecft_cli.train import run

    parsed = load_recipe(recipe, set_)
    if "WORLD_SIZE" not in os.environ and (num_processes != 1 or fsdp):
        raise typer.Exit(train_relaunched(parsed, num_processes, fsdp))
    with TrainProgress() as progress:
        try:
            result = run(
                parsed,
                overwrite=overwrite,
                trust_remote_code=trust_remote_code,
                on_event=progress,
            )
        except Preempted as exc:
            err.print(
                f"stopped on request ({exc}); checkpoint saved. Run the same command again to "
                f"resume (exit code {PREEMPTED}).",
                highlight=False,
            )
            raise typer.Exit(PREEMPTED) from None
        except Diverged as exc:
            fail(str(exc), DIVERGED)
    if not is_main_process():
        return
    if as_json:
        print_json(
            result.folder,
            result.tasks,
            result.matrix,
            result.metrics,
            status=result.state.status,
            already_complete=result.already_complete,
        )
        return
    if result.already_complete:
        err.print(f"{result.folder}: this run is already complete; nothing to do.", highlight=False)
    show_results(result.tasks, result.matrix, result.metrics)
    if result.state.routing_accuracy:
        out.print(routing_table(result.state.routing_accuracy))
    timings = time_split(result.state.timings)
    out.print(f"run folder: {result.folder} ({timings})", highlight=False)


def train_relaunched(recipe: Recipe, num_processes: int, fsdp: bool) -> int:
    """`pecft train` run again as N processes; the exit code the main one chose."""
    from pecft_cli.launch import relaunch

    if num_processes == 1:
        fail("--fsdp shards the model across processes; give --num-processes 2 or more.", BAD_INPUT)
    try:
        return relaunch(num_processes, sys.argv[1:], fsdp)
    except RankDied as exc:
        from pecft_cli import runs
        from pecft_cli.recipe import output_dir

        runs.record_end(output_dir(recipe), "process_died", str(exc))
        fail(str(exc), RANK_DIED)


def time_split(timings: Timings) -> str:
    """Wall time and how much of it went to training and to evaluation."""
    wall = timings.wall_seconds or 0.0
    train = sum(timings.train_seconds.values())
    evaluation = sum(timings.eval_seconds.values())
    share = f" = {evaluation / wall:.0%}" if wall else ""
    return f"{wall:.0f}s: training {train:.0f}s, evaluation {evaluation:.0f}s{share}"


def is_main_process() -> bool:
    """Whether this process prints: the only one, or rank 0 of several."""
    return launched_rank() == 0


RunArg = Annotated[Path, typer.Argument(help="Run folder (a `pecft train` output_dir).")]


def names(values: list[str] | None) -> list[str] | None:
    """`--tasks a,b --tasks c` -> [a, b, c]."""
    if not values:
        return None
    return [name for value in values for name in value.split(",") if name.strip()]


@app.command("eval")
@reports_errors
def eval_(
    run_dir: RunArg,
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", help="Tasks to score (names, comma-separated).")
    ] = None,
    stages: Annotated[
        list[str] | None,
        typer.Option("--stages", help="Stages to score: base, task names, or numbers (0 = base)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Score at most this many examples per task.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Eval batch size.")] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Extra eval file (rows: prompt, target[, choices])."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write (default RUN_DIR/eval, or eval-limitN)."),
    ] = None,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Score a trained run again from its saved adapters; resumes an interrupted evaluation."""
    quiet_libraries()
    from pecft_cli.eval_run import EvalOptions, evaluate_run

    options = EvalOptions(
        tasks=names(tasks),
        stages=names(stages),
        limit=limit,
        batch_size=batch_size,
        data=data or [],
        out=out_dir,
    )
    with TrainProgress() as progress:
        result = evaluate_run(
            run_dir, options, trust_remote_code=trust_remote_code, on_event=progress
        )
    if not is_main_process():
        return
    if as_json:
        print_json(
            result.out,
            result.tasks,
            result.matrix,
            result.metrics,
            extra={"tasks": result.extra_names, "matrix": result.extra},
            resumed_cells=result.resumed_cells,
        )
        return
    show_results(result.tasks, result.matrix, result.metrics)
    if result.extra:
        out.print(matrix_table(result.extra_names, result.extra, "Extra eval sets (%)"))
    resumed = f", {result.resumed_cells} cells resumed" if result.resumed_cells else ""
    out.print(f"results: {result.out} ({result.seconds:.0f}s{resumed})", highlight=False)


@app.command()
@reports_errors
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One run folder, or several to compare.")],
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
) -> None:
    """Show one run's matrix and metrics (and redraw eval/matrix.png), or compare several runs."""
    quiet_libraries()
    from pecft_cli.report import SUMMARY_FIELDS, read_results

    if as_json and as_csv:
        raise PecftError("--json and --csv: choose one output format.")
    reports = [read_results(path) for path in run_dirs]
    if len(reports) == 1 and not as_csv:
        (one,) = reports
        one.redraw_heatmap()
        if as_json:
            general = (
                dict(zip(("tasks", "matrix"), one.harness, strict=True)) if one.harness else None
            )
            print_json(
                one.folder, one.tasks, one.matrix, one.metrics, merges=one.merges, harness=general
            )
            return
        show_results(one.tasks, one.matrix, one.metrics)
        if one.harness:
            out.print(matrix_table(*one.harness, title="General ability (lm-eval-harness, %)"))
        if one.run.state.routing_accuracy:
            out.print(routing_table(one.run.state.routing_accuracy))
        if one.merges:
            out.print(merges_table(one.tasks, one.last_stage(), one.merges))
        return
    summaries = [r.summary() for r in reports]
    if as_json:
        print(json.dumps(summaries, indent=2))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(summaries)
    else:
        out.print(comparison_table(summaries))


def floats(text: str | None, option: str) -> list[float] | None:
    """`0.5,0.25` -> [0.5, 0.25], or a clear error naming the option."""
    if text is None:
        return None
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise PecftError(
            f"{option} {text}: give comma-separated numbers, one per adapter, e.g. 0.5,0.5."
        ) from None


@app.command("merge-adapters")
@reports_errors
def merge_adapters(
    sources: Annotated[
        list[Path],
        typer.Argument(help="A run folder (its per-task adapters), or adapter folders."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist).")],
    method: Annotated[
        str, typer.Option("--method", help="PEFT combination: cat, svd, linear, ties, dare_*, ...")
    ] = "cat",
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", help="From a run: only these tasks' adapters.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="One weight per adapter, comma-separated.")
    ] = None,
    density: Annotated[
        float | None, typer.Option("--density", help="ties/dare/magnitude_prune: fraction kept.")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="svd methods: output rank.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for DARE's random pruning.")] = 0,
    into_base: Annotated[
        bool, typer.Option("--into-base", help="Write a whole model with the adapter folded in.")
    ] = False,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model, when the adapters do not say.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier merge in --out.")] = (
        False
    ),
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Score the result on the run's tasks.")
    ] = False,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Combine adapters into one (or fold them into the base model) with PEFT, and score it."""
    quiet_libraries()
    from pecft_cli.merge import MergeOptions
    from pecft_cli.merge import merge_adapters as merge

    options = MergeOptions(
        method=method,
        tasks=names(tasks),
        weights=floats(weights, "--weights"),
        density=density,
        rank=rank,
        seed=seed,
        into_base=into_base,
        base=base,
        force=force,
        evaluate=evaluate,
    )
    with TrainProgress() as progress:
        result = merge(
            sources, out_dir, options, trust_remote_code=trust_remote_code, on_event=progress
        )
    show_merge(result, as_json)


def show_merge(result: Any, as_json: bool) -> None:
    """A merge's result: one JSON document, or a line on what was written and its scores."""
    record = result.record
    if as_json:
        last = result.last_stage
        document = {
            "out": str(result.out),
            "merge": record,
            "tasks": result.tasks,
            "scores": result.scores,
            "last_stage": {"stage": last[0], "scores": last[1]} if last else None,
        }
        print(json.dumps(document, indent=2))
        return
    what = "model" if record["into_base"] else f"adapter, rank {record['rank']}"
    how = f" with {record['method']}" if record["method"] else ""
    out.print(
        f"merged {len(record['inputs'])} adapter(s) ({record['input_kind']}){how} -> "
        f"{result.out} ({what})",
        highlight=False,
    )
    if record["base_reloaded_unquantized"]:
        out.print(
            f"the base was reloaded unquantized ({record['base']['dtype']}) to merge cleanly; "
            "the run trained on a quantized base",
            highlight=False,
        )
    if result.scores is not None:
        out.print(merges_table(result.tasks, result.last_stage, {result.out.name: result.scores}))


@app.command()
@reports_errors
def generate(
    source: Annotated[
        Path, typer.Argument(help="Run folder, adapter folder, or merged model folder.")
    ],
    prompts: Annotated[
        list[str] | None, typer.Argument(help="Prompts (or JSON rows of a task's fields).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Prompts: .jsonl/.csv rows, or text lines; - = stdin."),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Fill this task's prompt template.")
    ] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Run folder: the stage (default: the last).")
    ] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model for the adapter.")] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap each prompt in the model's chat template.")
    ] = False,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    as_json: JsonOption = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Answer prompts greedily with a result; one answer per line on stdout."""
    quiet_libraries()
    from pecft_cli.generate import GenerateOptions, prompt_lines, read_inputs
    from pecft_cli.generate import generate as answer

    inputs: list[Any] = list(prompts or [])
    if file is not None and str(file) == "-":
        if sys.stdin.isatty():
            raise PecftError("--file -: standard input is a terminal; pipe the prompts in.")
        inputs += prompt_lines(sys.stdin.read())
    elif file is not None:
        inputs += read_inputs(file)
    options = GenerateOptions(
        task=task,
        stage=stage,
        base=base,
        chat=chat,
        max_new_tokens=max_new_tokens,
        stop=stop,
        batch_size=batch_size,
    )
    with TrainProgress() as progress:
        results = answer(
            source, inputs, options, trust_remote_code=trust_remote_code, on_event=progress
        )
    if as_json:
        rows = [
            {"input": r.input, "prompt": r.prompt, "answer": r.answer}
            | ({"routed_to": r.routed_to} if r.routed_to is not None else {})
            for r in results
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if len(results) == 1:
        print(results[0].answer)
        return
    for result in results:
        print(result.answer.replace("\\", "\\\\").replace("\n", "\\n"))


def print_json(
    folder: Path,
    tasks: list[str],
    matrix: dict[str, list[float | None]],
    metrics: dict[str, Any] | None,
    **more: Any,
) -> None:
    """A run's results as one JSON document on stdout, for scripts."""
    document = {"folder": str(folder), "tasks": tasks, "matrix": matrix, "metrics": metrics}
    print(json.dumps(document | more, indent=2))


def show_results(
    tasks: list[str], matrix: dict[str, list[float | None]], metrics: dict[str, Any] | None
) -> None:
    out.print(matrix_table(tasks, matrix))
    if metrics is not None:
        out.print(metrics_table(metrics))


def main() -> None:
    from pecft_cli.launch import record_exit, record_failure

    try:
        app()
    except SystemExit as exc:
        record_exit(exc.code)
        raise
    except BaseException:
        if record_failure():
            raise SystemExit(1) from None
        raise
