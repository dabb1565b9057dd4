"""The exception types a command turns into one paragraph and its own exit code.

Everything the command line reports as bad input (exit code 2, no traceback) is a `PecftError`;
any other exception is a bug and keeps its traceback. A message quotes what the user wrote only
through `short`, and is cut by `bounded`, so no input makes it longer than a paragraph.
"""

import reprlib
import signal
from typing import Any

SIGNALS = {int(number) for number in signal.Signals}
MESSAGE_LIMIT = 1500
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 3


class PecftError(Exception):
    """A problem with the user's recipe, data, model or run folder, explained in one paragraph."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1) and saved a checkpoint to resume from."""


class Diverged(Exception):
    """The loss or the gradients became NaN or infinite; nothing of that step was applied."""


class RankDied(Exception):
    """A process of a multi-process run ended without finishing (killed, out of memory)."""

    def __init__(self, rank: int, exitcode: int, processes: int) -> None:
        super().__init__(rank, exitcode, processes)
        self.rank, self.exitcode, self.processes = rank, exitcode, processes

    def __str__(self) -> str:
        if self.exitcode >= 0:
            how = f"exited with code {self.exitcode} without finishing"
        else:
            name = signal.Signals(-self.exitcode).name if -self.exitcode in SIGNALS else "a signal"
            how = f"was killed by {name}"
            if name == "SIGKILL":
                how += " (what the kernel's out-of-memory killer sends; `dmesg` tells)"
        return (
            f"process {self.rank} of {self.processes} {how}, and the others were stopped. The run "
            "folder keeps its last checkpoint; run the same command again to resume from there."
        )


def short(value: Any, limit: int = 80) -> str:
    """A value as Python writes it, cut to about `limit` characters however large it is."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message cut to one paragraph of at most `limit` characters."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 15] + " ... (cut here)"


def listing(items: list[str], limit: int = 12) -> str:
    """Names joined by commas, the first `limit` of them, each cut short, and how many more."""
    shown = ", ".join(short_text(str(item), 40) for item in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return (shown or "none") + more


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """A suggestion clause for a misspelt name, or an empty string when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, for a one-paragraph error."""
    text = str(exc).strip()
    return short_text(text.splitlines()[0]) if text else type(exc).__name__


def short_text(text: str, limit: int = 300) -> str:
    """Text quoted from a library or a file, cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
