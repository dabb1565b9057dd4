"""Exit codes and how a command reports bad input: one paragraph on stderr, no traceback.

Exit codes: 0 success, 2 bad input (recipe, data, model or run folder; one paragraph on stderr,
no traceback), 3 training diverged (NaN or infinite gradients), 4 a process of a multi-process
run died, 75 stopped on request (SIGTERM/SIGUSR1) with a checkpoint to resume from, 1 anything
else.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.text import Text

from pecft_cli.cli.console import err
from pecft_cli.errors import PecftError, bounded
from pecft_cli.parallel.launch import launched_rank

if TYPE_CHECKING:
    from pecft_cli.data.render import RenderedTask
    from pecft_cli.recipe.schema import Recipe

BAD_INPUT = 2


DIVERGED = 3  # the loss went NaN or infinite; nothing of that step was kept


RANK_DIED = 4  # a process of a multi-process run died; the rest were stopped


PREEMPTED = 75  # EX_TEMPFAIL: try again later; the run resumes from its checkpoint


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


def is_main_process() -> bool:
    """Whether this process prints: the only one, or rank 0 of several."""
    return launched_rank() == 0


def read_data(recipe: Recipe) -> dict[str, RenderedTask]:
    """Every check that needs no model, before any model library loads: each task's data paths,
    and every row of its local data files read and rendered (`render_local`)."""
    from pecft_cli.data.render import render_local

    if is_main_process():
        err.print(f"reading the data of {len(recipe.tasks)} task(s)", highlight=False)
    return render_local(recipe)


def quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of pecft's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported, so set it first
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
