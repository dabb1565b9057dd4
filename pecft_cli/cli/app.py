"""The `pecft` command line: the app and its commands, one module each; nothing else lives here.

Each command parses its options, calls the library and renders the result; `exits` turns bad
input into one paragraph and its exit code (listed there and in the README).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pecft_cli import __version__
from pecft_cli.cli import eval as eval_command
from pecft_cli.cli import generate, merge, report, schema, train, validate
from pecft_cli.cli.console import out
from pecft_cli.cli.exits import reports_errors

app = typer.Typer(
    name="pecft",
    help="Parameter-efficient continual fine-tuning: LoRA task by task, with an evaluation matrix.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("validate")(reports_errors(validate.validate))
app.command("train")(reports_errors(train.train))
app.command("eval")(reports_errors(eval_command.eval_))
app.command("report")(reports_errors(report.report))
app.command("merge-adapters")(reports_errors(merge.merge_adapters))
app.command("generate")(reports_errors(generate.generate))
app.command("schema")(reports_errors(schema.schema))


@app.callback(invoke_without_command=True)
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"pecft {__version__}")
        raise typer.Exit()


def main() -> None:
    from pecft_cli.parallel.launch import record_exit, record_failure

    try:
        app()
    except SystemExit as exc:
        record_exit(exc.code)
        raise
    except BaseException:
        if record_failure():
            raise SystemExit(1) from None
        raise
