"""Command line: search the hyperparameters of one stage (or all) of the NER compression pipeline.

    python -m tuner.run --stage teacher --trials 4 --data ../shared/data/conll2003
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tuner.config import BATCH_ORDERS, PRECISIONS, PROFILES, SPLITS, STAGES, RunSettings, resolve_profile
from tuner.errors import TunerError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``, or a one-line error saying which bound failed."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tuner.run", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES + ("all",), help="stage to search; all runs the three in order")
    p.add_argument("--trials", type=positive_int, default=4, help="number of trials (Optuna TPE samples)")
    p.add_argument("--profile", choices=PROFILES, default="auto",
                   help="auto: gpu with CUDA, else cpu; gpu: bert-base-cased, all data; cpu: packaged MiniLM, "
                        "a subset; smoke: tiny random BERT, seconds")
    p.add_argument("--data", default="conll2003",
                   help="conll2003 (the Hugging Face Hub) or a folder of CoNLL files (train.txt, validation.txt, test.txt)")
    p.add_argument("--model", help="teacher's pretrained model: Hub id, local folder, minilm or tiny (default: the profile's)")
    p.add_argument("--teacher", type=Path, help="teacher folder for factorized/student (default: RESULTS/teacher/best)")
    p.add_argument("--split", choices=SPLITS, default="report",
                   help="report: 80/10/10 of train, seeded; official: the corpus's validation and test files")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the sampler, the heads and the data order")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--cpus-per-trial", type=float, default=0.0, help="CPUs per trial; 0: all of one node")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default: 1 with CUDA, else 0)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or 127.0.0.1:6379)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="interface the Ray dashboard listens on")
    p.add_argument("--keep-dashboard", action="store_true", help="keep Ray and its dashboard up after the search (Ctrl-C ends)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the stage")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier search of the stage and start again")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failing trial")
    p.add_argument("--process-per-trial", action="store_true",
                   help="start every trial in a fresh worker process instead of reusing a finished trial's "
                        "(isolates trials; costs the process start and model-code import per trial)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    overrides = p.add_argument_group("profile overrides")
    overrides.add_argument("--epochs", type=positive_int)
    overrides.add_argument("--student-epochs", type=positive_int, help="epochs of the student stage (default: the profile's)")
    overrides.add_argument("--batch-size", type=positive_int)
    overrides.add_argument("--max-length", type=positive_int)
    overrides.add_argument("--train-sentences", type=positive_int)
    overrides.add_argument("--eval-sentences", type=positive_int)
    overrides.add_argument("--max-params", type=positive_int, help="the student's parameter budget")
    overrides.add_argument("--space-dir", type=Path, help="folder with <stage>.yaml search spaces")
    overrides.add_argument("--precision", choices=PRECISIONS,
                           help="auto (the default): bf16 autocast where the device has native bf16 (CUDA with bf16, "
                                "CPUs with AVX512-BF16 or AMX), else fp32")
    overrides.add_argument("--batches", choices=BATCH_ORDERS,
                           help="training batches of every stage: random (the default, the HF Trainer's order, run "
                                "unpadded) or length (length-grouped, padded per batch: faster, 0.5 to 1 point less "
                                "F1 at 3 epochs here)")
    overrides.add_argument("--label-subtokens", choices=("first", "all"),
                           help="which sub-tokens of a word carry its label in training: first (the default, the "
                                "HF recipe) or all (continuations get the word's I- label, the report's alignment)")
    return p


def settings_from(args: argparse.Namespace, cuda_available: bool) -> RunSettings:
    profile = resolve_profile(args.profile, cuda_available, model=args.model, epochs=args.epochs,
                              student_epochs=args.student_epochs,
                              batch_size=args.batch_size, max_length=args.max_length,
                              train_sentences=args.train_sentences, eval_sentences=args.eval_sentences,
                              max_params=args.max_params, space_dir=args.space_dir, precision=args.precision,
                              batches=args.batches,
                              label_all_subtokens=None if args.label_subtokens is None else args.label_subtokens == "all")
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if cuda_available else 0.0)
    stages = STAGES if args.stage == "all" else (args.stage,)
    return RunSettings(stages=stages, trials=args.trials, profile=profile, data=args.data, split=args.split,
                       seed=args.seed, results_dir=args.results_dir, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=gpus, address=args.address, teacher=args.teacher, resume=args.resume,
                       overwrite=args.overwrite, quiet=args.quiet, dashboard_host=args.dashboard_host,
                       keep_dashboard=args.keep_dashboard, max_failures=args.max_failures,
                       process_per_trial=args.process_per_trial)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from tuner import pipeline

    try:
        settings = settings_from(args, torch.cuda.is_available())
        records = pipeline.run(settings, echo=(lambda *a: None) if args.quiet else print)
    except TunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for record in records.values():
        print(pipeline.summary_line(record))
    print(f"best configs: {settings.results_dir / 'best_configs.yaml'}; table: {settings.results_dir / 'summary.md'}")
    if settings.keep_dashboard:
        from tuner import search

        search.wait_for_interrupt(print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
