"""The one error type the command-line tools turn into a one-line message and a non-zero exit."""


class TunerError(Exception):
    """Bad input or a missing prerequisite; the message names the file, key, flag or line at fault."""
