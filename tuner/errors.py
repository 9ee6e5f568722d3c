"""The error types the command-line tools turn into a one-line message and a non-zero exit, and what keeps other
libraries' and tuner's own internal notes off a user's screen."""

import contextlib
import logging


class TunerError(Exception):
    """Bad input or a missing prerequisite; the message names the file, key, flag or line at fault."""

    status = 2  # the exit status: a refused input, as argparse's


class Interrupted(TunerError):
    """The user stopped a search (Ctrl-C) before every trial ended: nothing is saved as its result, and
    ``--resume`` continues it."""

    status = 130  # a shell's status for a process ended by SIGINT


def first_line(error: BaseException) -> str:
    """What an error says went wrong in one line: the last line of its text (a Ray trial's traceback ends with it),
    cut short; its type's name when it says nothing."""
    lines = str(error).strip().splitlines()
    return lines[-1][:300] if lines else type(error).__name__


@contextlib.contextmanager
def quieted(logger_name: str | None = None, level: int = logging.ERROR):
    """A logger (the root one by default) at ``level`` or above for the duration, then back at its own level."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(max(before, level))
    try:
        yield
    finally:
        logger.setLevel(before)
