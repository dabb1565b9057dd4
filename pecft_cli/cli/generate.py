"""`pecft generate`: answer prompts greedily with a run, an adapter or a merged model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pecft_cli.cli.console import TrainProgress
from pecft_cli.cli.exits import quiet_libraries
from pecft_cli.cli.options import JsonOption, TrustOption
from pecft_cli.errors import PecftError


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
    from pecft_cli.serving.generate import GenerateOptions, prompt_lines, read_inputs
    from pecft_cli.serving.generate import generate as answer

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
