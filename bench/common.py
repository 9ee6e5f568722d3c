"""What every benchmark shares: the sizes as tuner settings, the selected sentences, JSON out, where a report and
its figures go.

Each measurement runs in its own process (``python bench/<module>.py <command> --out FILE ...``) so that no
process's threads, caches or Ray instance leak into another's timing; the orchestrator reads FILE back. A report
goes to ``--output`` (``results/<name>`` by default; a temporary folder with ``--quick``, which never writes under
the checkout's ``results/``) and its figures, through ``tuner.figures``, to ``--record`` (by default
``benchmarks.json`` beside the report: ``results/benchmarks.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `tuner` and `bench` import from the checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tuner import figures, registry  # noqa: E402
from tuner.cli import OneLineParser, int_at_least, positive_int  # noqa: E402
from tuner.config import RunSettings, resolve_profile  # noqa: E402
from tuner.errors import TunerError  # noqa: E402

BATCH_SIZE = 16
PEERS = ("default", "tuned")  # the Hugging Face peers' two set-ups (bench/hf_peer.py)
LEVERS = ("fp32", "bf16", "compile", "compile-bf16")  # fit's training step under each (bench/probes.py steps)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager: dynamo and AOTAutograd, no code generation;
# eager: dynamo's graph capture alone (--quick's plumbing check)
BATCHINGS = ("random", "length")  # the peers' batchings: random padded batches, or group_by_length
SEED = 0  # of the first repeat; repeat r runs with seed r on both sides (split, head, data order, dropout)
SPLIT = "report"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "conll2003"  # the shared CoNLL-2003 folder beside the checkout
RESULTS = figures.BENCHMARKS.parent
# Throughput does not depend on these; they are the middle of search_spaces/teacher.yaml.
THROUGHPUT_HPARAMS = {"learning_rate": 5e-5, "weight_decay": 0.05, "warmup_ratio": 0.1}


class BenchError(RuntimeError):
    """A step that failed; its message is the one line the run ends with."""


def size_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every measurement process takes: data, sizes, and the JSON file to write."""
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-sentences", type=positive_int, required=True)
    parser.add_argument("--eval-sentences", type=positive_int, required=True)
    parser.add_argument("--epochs", type=positive_int, required=True)
    parser.add_argument("--seed", type=int, default=SEED, help="the split, the head, the data order and dropout")
    parser.add_argument("--out", type=Path, required=True, help="JSON file the measurement is written to")


TRAIN_SEED_FLAG = {"type": int, "help": "the student's own seed: its initialisation, data order and dropout "
                                        "(default: --seed, which also picks the sentences)"}


def train_seed(args: argparse.Namespace) -> int:
    """A distillation run's ``--train-seed``, or ``--seed`` without one."""
    return args.seed if args.train_seed is None else args.train_seed


def require_conll(parser: argparse.ArgumentParser, folder: Path) -> None:
    """Refuse a --data folder without train.txt with the parser's one-line error, before any work starts."""
    if not (folder / "train.txt").is_file():
        parser.error(f"--data {folder}: no train.txt there")


def command_parser(prog: str, doc: str, commands: dict) -> argparse.ArgumentParser:
    """A parser with one sub-command per measurement, each taking the shared size flags plus its own."""
    parser = OneLineParser(prog=prog, description=doc.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, extra in commands.items():
        command = sub.add_parser(name)
        size_arguments(command)
        for flag, kwargs in extra.items():
            command.add_argument(flag, **kwargs)
    return parser


def run_settings(args: argparse.Namespace, stage: str = "teacher", teacher: Path | None = None) -> RunSettings:
    """The tuner settings a `python -m tuner.run --profile cpu --model minilm ...` call with these sizes has."""
    profile = resolve_profile("cpu", False, model="minilm", epochs=args.epochs, batch_size=BATCH_SIZE,
                              train_sentences=args.train_sentences, eval_sentences=args.eval_sentences)
    return RunSettings(stages=(registry.by_name(stage),), trials=1, profile=profile, data=str(args.data), split=SPLIT, seed=args.seed,
                       teacher=teacher)


def selected_sentences(settings: RunSettings) -> dict:
    """The train and validation sentences ``tuner.task.build_task`` encodes for ``settings``, as words and tags."""
    from tuner.task import select_sentences

    _, chosen = select_sentences(settings)
    return {"train": chosen["train"], "validation": chosen["validation"]}


def non_embedding_parameters(model) -> int:
    """Parameters outside the word, position and token-type embedding tables (the 6ND FLOP count's N)."""
    from torch import nn

    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def write_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def command_line(script: str, argv: list) -> str:
    """How a report and its figures name the command that produced them: ``python bench/<script> <argv>``."""
    return figures.command_line(f"bench/{script}", argv)


def output_flags(parser: argparse.ArgumentParser, report: str) -> None:
    """``--output`` (the markdown report; its record goes beside it as .json) and ``--record`` (the figures)."""
    parser.add_argument("--output", type=Path, help=f"the report (default results/{report}; with --quick, a "
                                                    "temporary folder's)")
    parser.add_argument("--record", type=Path, help="the figures file (default: benchmarks.json beside --output)")


def settle_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, report: str, command: str) -> None:
    """Fill in ``--output`` and ``--record``, and take the run's provenance (``args.started``: commit, date, machine,
    for its figures). A ``--quick`` run asked to write under the checkout's ``results/``, or a figures file
    ``tuner.figures.record`` would refuse, is a one-line error before any work."""
    quick = getattr(args, "quick", False)
    if args.output is None:
        args.output = (Path(tempfile.mkdtemp(prefix="tuner-bench-quick-")) if quick else RESULTS) / report
    if args.record is None:
        args.record = args.output.with_name(figures.BENCHMARKS.name)
    if quick and any(path.resolve().is_relative_to(RESULTS.resolve()) for path in (args.output, args.record)):
        parser.error(f"--quick writes nothing under {RESULTS}: give --output and --record elsewhere")
    try:
        figures.check_writable(args.record, command)
    except TunerError as exc:
        parser.error(str(exc))
    args.started = figures.provenance(figures.CODE + ("bench",))


def record_figures(entries: list[dict], path: Path) -> None:
    """Write a run's figures (``tuner.figures.headline`` entries) into ``path`` and say so; a file that refuses them
    ends the run with its one-line message and exit status 1."""
    if entries:
        try:
            figures.record(entries, path)
        except TunerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"{len(entries)} figure(s) recorded in {path}")


def utc_minute() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def teacher_result(parser: argparse.ArgumentParser, best: Path) -> dict:
    """A searched teacher's ``best/result.json``, or a one-line error naming the folder that lacks it."""
    record = best / "result.json"
    if not record.is_file():
        parser.error(f"--teacher {best}: no result.json (a searched teacher's best folder)")
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        parser.error(f"{record}: unreadable ({str(err).splitlines()[0]})")
    if not isinstance(found, dict):
        parser.error(f"{record}: expected a JSON object, got {type(found).__name__}")
    return found


def publish(output: Path | None, text: str, record) -> None:
    """Write the markdown report to ``output`` and its record beside it as .json, then print the report (with no
    ``output``, only print it)."""
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(text)
    print(f"report: {output}")


def measure_and_publish(args: argparse.Namespace, measure: Callable[[], object],
                        report: Callable[[object, str, float], str], entries: Callable[[object], list]) -> int:
    """Run ``measure()``, ``publish`` ``report(record, started, minutes)`` to ``--output`` and record
    ``entries(record)`` (its figures) in ``--record``: exit status 0, or 1 after a failed step (a ``BenchError``),
    whose one-line message is printed and nothing written."""
    started, clock = utc_minute(), time.time()
    try:
        record = measure()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    publish(args.output, report(record, started, (time.time() - clock) / 60), record)
    record_figures(entries(record), args.record)
    return 0


def publish_from_work(parser: argparse.ArgumentParser, args: argparse.Namespace, script: str, argv: list,
                      run: Callable, report: Callable, entries: Callable) -> int:
    """The end of a main() whose benchmark searches in a work folder (``--work``, by default beside the report):
    settle the outputs and provenance, then ``measure_and_publish`` ``run(args)``, ``report(record, command, started,
    minutes)`` and ``entries(record, args)``."""
    args.command = command_line(script, argv)
    settle_outputs(parser, args, script.replace(".py", ".md"), args.command)
    args.work = args.work or args.output.parent / (args.output.stem + "-work")
    return measure_and_publish(args, lambda: run(args),
                               lambda record, started, minutes: report(record, args.command, started, minutes),
                               lambda record: entries(record, args))
