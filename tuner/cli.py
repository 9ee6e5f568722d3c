"""What every ``python -m tuner.<command>`` shares: a parser whose errors are one line, the flag types, the
profile flags generated from ``tuner.config.Profile``, the hint naming the flag behind a recorded setting, and
the ``main`` wrapper that turns bad input (a ``TunerError``) into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from tuner.config import Profile, RunSettings, profile_overrides
from tuner.errors import Interrupted, TunerError

BAD_INPUT = 2  # the exit status of a refused input, argparse's too


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def results_parser(prog: str, doc: str) -> OneLineParser:
    """A command's parser, described by its module docstring's first paragraph, with ``--results-dir``."""
    parser = OneLineParser(prog=prog, description=" ".join(doc.strip().split("\n\n")[0].split()))
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="the results folder")
    return parser


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer no smaller than ``minimum`` (and no larger than ``maximum``), or a one-line
    error saying which bound failed."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}" if maximum is None else f"integer in [{minimum}, {maximum}]"
    return parse


positive_int = int_at_least(1)
seed_int = int_at_least(0, 2**32 - 1)  # what numpy's RandomState, which Optuna's samplers seed, accepts
FLAG_TYPES = {"int": positive_int, "int | None": positive_int, "Path": Path, "str": str}  # by annotation


def flag_name(setting: str) -> str:
    """A setting's flag: its field name, dashed (``batch_size`` -> ``--batch-size``)."""
    return "--" + setting.replace("_", "-")


def add_profile_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Profile`` field, of the field's name, type, choices and help; a flag not given keeps the
    profile's value."""
    group = parser.add_argument_group("profile overrides (default: the profile's value)")
    for f in profile_overrides():
        group.add_argument(flag_name(f.name), dest=f.name, type=FLAG_TYPES[f.type], default=argparse.SUPPRESS,
                           choices=f.metadata["choices"], help=f.metadata["help"])


def overrides_from(args: argparse.Namespace) -> dict:
    """The profile fields set on the command line."""
    return {f.name: getattr(args, f.name) for f in profile_overrides() if hasattr(args, f.name)}


def flag_hint(key: str) -> str:
    """`` (set by --flag)`` for a recorded setting (``trials``, ``profile.epochs``) that a flag of ``tuner.run``
    sets, else nothing."""
    run_flags = {f.name for f in dataclasses.fields(RunSettings)} - {"stages", "profile"}
    profile_flags = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    name = key.removeprefix("profile.")
    if key == "profile.name":
        flag = "--profile"
    elif key == "search_space_sha256":
        flag = "the search space file"
    elif name in (profile_flags if key.startswith("profile.") else run_flags):
        flag = flag_name(name)
    else:
        return ""
    return f" (set by {flag})"


def entry_point(main):
    """Wrap a command's ``main(argv) -> int``: a ``TunerError`` becomes ``error: <message>`` on stderr, one line,
    and its exit status (2 for bad input), with no traceback; so does Ctrl-C (status 130)."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except TunerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.status
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return Interrupted.status
    return wrapped


def results_command(prog: str, doc: str, write: Callable[[Path], str]):
    """The ``main(argv)`` of a command that writes into a results folder: it reads ``--results-dir`` and prints what
    ``write(results_dir)`` says it wrote."""
    @entry_point
    def main(argv=None) -> int:
        print(write(results_parser(prog, doc).parse_args(argv).results_dir))
        return 0
    return main
