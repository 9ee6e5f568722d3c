"""The error types the command-line tools turn into a one-line message and a non-zero exit."""


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
