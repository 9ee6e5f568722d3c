"""Teacher F1 by label alignment and batch order, per seed: the ablation behind tuner's first-sub-token default.

    python bench/alignment.py [--seeds 0 1 2] [--quick]

One config (the region the teacher searches found best) trained by ``tuner.training.fit`` with each of

- labels: on every sub-token (continuations get the word's I- label, the report's alignment) or on a word's
  first sub-token only (the HF recipe);
- batches: length-grouped (tuner's) or random (the HF ``Trainer``'s), both dynamically padded;

at each seed (the seeded subsample, the classifier head, the data order and dropout), on the `cpu` profile's
sentences and epochs. Best validation F1 over the epochs, per seed, their mean, and the mean's difference from
tuner's default. About 15 minutes on 2 cores; --quick runs a tiny model in seconds (the tests run it).
The table is written to results/alignment.md (results/alignment-quick.md with --quick) and printed.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, ROOT, OneLineParser, positive_int, require_conll  # noqa: E402

HPARAMS = {"learning_rate": 5.1e-5, "weight_decay": 0.07, "warmup_ratio": 0.12}  # near the searches' best teacher
VARIANTS = [("first", "length"), ("all", "length"), ("first", "random"), ("all", "random")]  # tuner's default first
LABELS = {"first": "first sub-token only (HF recipe)", "all": "every sub-token (the report's)"}
BATCHES = {"length": "length-grouped (tuner)", "random": "random (HF Trainer)"}  # fit's batches


@functools.cache
def encoded_task(profile_name: str, data: Path, seed: int, labels: str) -> tuple:
    """The profile, its tokenizer and the seeded sentences encoded with ``labels``: once per (seed, labels), as
    both batch orders train on the same task."""
    from tuner.config import RunSettings, resolve_profile
    from tuner.stages import teacher
    from tuner.task import load_task

    profile = resolve_profile(profile_name, False, label_subtokens=labels)
    settings = RunSettings(stages=(teacher.STAGE,), trials=1, profile=profile, data=str(data), seed=seed)
    task, tokenizer = load_task(settings, None)
    return profile, tokenizer, task


def train_variant(args, seed: int, labels: str, batches: str) -> dict:
    from tuner.config import train_settings
    from tuner.models import initial_token_classifier
    from tuner.training import fit

    profile, tokenizer, task = encoded_task(args.profile, args.data, seed, labels)
    model = initial_token_classifier(profile.model, task.labels, seed, len(tokenizer))
    started, scores = time.perf_counter(), []
    settings = dataclasses.replace(train_settings(profile, profile.epochs, seed, args.threads), batches=batches)
    for result in fit(model, HPARAMS, task, settings):
        scores.append(result.metrics["val_f1"])
    return {"best": max(scores), "per_epoch": scores, "seconds": time.perf_counter() - started}


def report(args, runs: dict, minutes: float) -> str:
    base = statistics.mean(runs[VARIANTS[0]][s]["best"] for s in args.seeds)
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    lines = [f"| labels | batches | {seeds} | mean | vs tuner's default | s per run |",
             "|---|---|" + "---|" * len(args.seeds) + "---|---|---|"]
    for labels, batches in VARIANTS:
        cells = runs[(labels, batches)]
        mean = statistics.mean(cells[s]["best"] for s in args.seeds)
        per_seed = " | ".join(f"{cells[s]['best']:.4f}" for s in args.seeds)
        seconds = statistics.mean(cells[s]["seconds"] for s in args.seeds)
        lines.append(f"| {LABELS[labels]} | {BATCHES[batches]} | {per_seed} | {mean:.4f} | "
                     f"{(mean - base) * 100:+.2f} points | {seconds:.0f} |")
    command = "python bench/alignment.py" + (" --quick" if args.quick else "") + \
        f" --seeds {' '.join(map(str, args.seeds))}"
    return "\n".join([
        "# Label alignment and batch order: teacher F1 per seed", "",
        f"- command: `{command}`",
        f"- run: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes, {args.threads} threads",
        f"- data: {args.data}, report split; the `{args.profile}` profile's sentences and epochs; learning rate "
        f"{HPARAMS['learning_rate']}, weight decay {HPARAMS['weight_decay']}, warmup {HPARAMS['warmup_ratio']}",
        "- cells: best validation F1 over the epochs (entity-level, seqeval, word level)", "", *lines, ""])


def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/alignment.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="the tiny model on a few dozen sentences (seconds)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    parser.add_argument("--output", type=Path, help="report file (default results/alignment.md, "
                                                    "results/alignment-quick.md with --quick)")
    args = parser.parse_args(argv)
    require_conll(parser, args.data)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice")
    args.profile = "smoke" if args.quick else "cpu"
    output = args.output or ROOT / "results" / ("alignment-quick.md" if args.quick else "alignment.md")
    from tuner.errors import TunerError

    started, runs = time.perf_counter(), {}
    try:
        for labels, batches in VARIANTS:
            runs[(labels, batches)] = {}
            for seed in args.seeds:
                runs[(labels, batches)][seed] = run = train_variant(args, seed, labels, batches)
                print(f"labels {labels}, batches {batches}, seed {seed}: best F1 {run['best']:.4f} "
                      f"({run['seconds']:.0f} s)", flush=True)
    except TunerError as error:  # bad data files, a missing packaged model: one line, nothing written
        parser.error(str(error))
    text = report(args, runs, (time.perf_counter() - started) / 60)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
