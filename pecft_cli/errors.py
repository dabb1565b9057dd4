"""The one exception type for input a user can fix.

Everything the command line reports as bad input (exit code 2, no traceback) is a `PecftError`;
any other exception is a bug and keeps its traceback.
"""


class PecftError(Exception):
    """A problem with the user's recipe, data, model or run folder, explained in one paragraph."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1) and saved a checkpoint to resume from."""


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """A suggestion clause for a misspelt name, or an empty string when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, for a one-paragraph error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
