"""Section 2's F1 question, paired over many student seeds: does distilling from cached teacher logits lose F1?

    python bench/student_seeds.py --work /tmp/tuner-bench-XXXX [--seeds 3] [--seed-offset 0] [--output results/student-seeds.md]

A single student run's best F1 moves by a point or more with its seed alone (initialisation, data order, dropout)
at the cpu sizes, so section 2's three seeds, one run a side, cannot tell a 0.5-point difference from noise. This
runs both sides again on a kept benchmark work folder (``run_benchmarks.py --keep``): per repeat, its teacher and
tuner's best student config, at ``--seeds`` student seeds (the repeat's own seed, then +10, +20, ...; ``--seed-offset k`` starts at +10k; the
sentences stay the repeat's): tuner's trial (``probes.py student-trial``: teacher logits once, then the trial as the search's
trainable runs it) and the online run (``hf_peer.py distill``: a Trainer that runs the teacher every step), with the
same config, teacher, sentences and student seed. It reports each pair's difference, their mean with a 95%
interval (Student's t), and each side's spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, ROOT, BenchError, OneLineParser, int_at_least, positive_int  # noqa: E402
from bench.run_benchmarks import FULL, QUICK, machine_lines, measure  # noqa: E402
from bench.student_epochs import kept_work_args, run_and_report  # noqa: E402

SEED_STEP = 10  # student seeds seed, seed + 10, ...: apart from every repeat's own seed (0, 1, 2)


def one_pair(seed: int, teacher: Path, train_seed: int, args) -> dict:
    # one folder per size, so a --quick run never overwrites (or --reuse reads) a full-size pair
    work = args.work / f"repeat-{seed + 1}" / f"student-seeds-{args.train_sentences}-sentences-{args.epochs}-epochs"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    sizes = argparse.Namespace(**dict(vars(args), seed=seed))
    student = teacher.parent.parent / "student" / "best"  # the repeat's section 2 search
    if not (student / "result.json").is_file():
        raise BenchError(f"{student}: no result.json (the repeat's student search did not finish)")
    extra = ("--teacher", teacher, "--student", student, "--train-seed", train_seed)
    kept = [work / f"{side}-{train_seed}.json" for side in ("tuner", "online")]
    if args.reuse and all(path.is_file() for path in kept):  # measured by an earlier run on this folder
        tuner, online = (json.loads(path.read_text()) for path in kept)
    else:
        tuner = measure("probes", "student-trial", sizes, work, *extra, name=kept[0].stem)
        online = measure("hf_peer", "distill", sizes, work, *extra, name=kept[1].stem)
    return {"seed": seed, "train_seed": train_seed, "tuner_f1": tuner["best_val_f1"],
            "online_f1": online["best_val_f1"], "tuner_trial": tuner["trial_wall_seconds"],
            "online_trial": online["trial_wall_seconds"], "tuner_curve": tuner["val_f1_per_epoch"],
            "online_curve": online["val_f1_per_epoch"]}


def interval(differences: list) -> tuple:
    """Mean and the half-width of its 95% interval (Student's t; NaN for a single pair)."""
    from scipy.stats import t  # seqeval's scikit-learn brings scipy

    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, float("nan")
    return mean, t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5


def report(args, rows: list, started: str, minutes: float) -> str:
    differences = [100 * (r["tuner_f1"] - r["online_f1"]) for r in rows]
    mean, half = interval(differences)
    median = statistics.median
    lines = ["# Student: cached teacher logits (tuner) vs online distillation, paired over student seeds", "",
             f"- command: `python bench/student_seeds.py {' '.join(map(str, args.argv))}`",
             f"- run: {started}, {minutes:.0f} minutes", *machine_lines(),
             f"- from `{args.work}`: each repeat's teacher, sentences and best student config; {args.seeds} student "
             f"seed(s) per repeat (from the repeat's seed + {SEED_STEP * args.seed_offset}), {args.epochs} epoch(s), {args.train_sentences} train and {args.eval_sentences} "
             "validation sentences", "",
             "| seed (sentences, teacher) | student seed | tuner F1 | online F1 | tuner - online, points "
             "| tuner trial, s | online trial, s |", "|---|---|---|---|---|---|---|"]
    for r, d in zip(rows, differences):
        lines.append(f"| {r['seed']} | {r['train_seed']} | {r['tuner_f1']:.4f} | {r['online_f1']:.4f} | {d:+.2f} "
                     f"| {r['tuner_trial']:.1f} | {r['online_trial']:.1f} |")
    lines += ["", f"- pairs: {len(rows)}; tuner - online: mean **{mean:+.2f}** points, 95% interval "
              f"{mean - half:+.2f} to {mean + half:+.2f}; median {median(differences):+.2f}; "
              f"min {min(differences):+.2f}, max {max(differences):+.2f}",
              f"- best F1, mean over pairs: tuner {statistics.mean(r['tuner_f1'] for r in rows):.4f}, online "
              f"{statistics.mean(r['online_f1'] for r in rows):.4f}",
              f"- spread of one run over student seeds (standard deviation, points; per teacher, then their mean): "
              f"tuner {per_teacher_spread(rows, 'tuner_f1')}, online {per_teacher_spread(rows, 'online_f1')}",
              f"- trial wall time, median: tuner {median(r['tuner_trial'] for r in rows):.1f} s, online "
              f"{median(r['online_trial'] for r in rows):.1f} s (online / tuner "
              f"{median(r['online_trial'] for r in rows) / median(r['tuner_trial'] for r in rows):.2f}x; "
              "one process at a time, outside Ray)", "",
              "Validation F1 per epoch:", ""]
    for r in rows:
        lines.append(f"- seed {r['seed']}, student seed {r['train_seed']}: tuner "
                     f"{', '.join(f'{x:.4f}' for x in r['tuner_curve'])}; online "
                     f"{', '.join(f'{x:.4f}' for x in r['online_curve'])}")
    return "\n".join(lines) + "\n"


def per_teacher_spread(rows: list, key: str) -> str:
    groups = {}
    for r in rows:
        groups.setdefault(r["seed"], []).append(r[key])
    if any(len(v) < 2 for v in groups.values()):
        return "n/a (one seed per teacher)"
    spreads = [statistics.stdev(v) * 100 for v in groups.values()]
    return f"{', '.join(f'{s:.2f}' for s in spreads)} (mean {statistics.mean(spreads):.2f})"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="python bench/student_seeds.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a work folder kept by run_benchmarks.py --keep")
    parser.add_argument("--seeds", type=positive_int, default=3, help="student seeds per repeat (default 3)")
    parser.add_argument("--seed-offset", type=int_at_least(0), default=0,
                        help="start at the repeat's seed + 10 x this (default 0: the repeat's own seed), so a second "
                             "run pairs new student seeds")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (the quick "
                                                                 "benchmark's sizes, 1 epoch)")
    parser.add_argument("--epochs", type=positive_int, help=f"student epochs, both sides (default {FULL['epochs']}, "
                                                            "section 2's)")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--eval-sentences", type=positive_int, help=f"default {FULL['eval_sentences']}")
    parser.add_argument("--reuse", action="store_true", help="read the pairs an earlier run measured in --work "
                                                              "instead of training them again (--seeds 6 after "
                                                              "--seeds 3 then trains only the new ones)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "student-seeds.md")
    args, found = kept_work_args(parser, argv, lambda quick: QUICK if quick else FULL)

    def rows() -> list:
        pairs = [one_pair(seed, teacher, seed + SEED_STEP * j, args)
                 for j in range(args.seed_offset, args.seed_offset + args.seeds)
                 for seed, teacher in found]
        return sorted(pairs, key=lambda r: (r["seed"], r["train_seed"]))

    return run_and_report(args, rows, report)

if __name__ == "__main__":
    sys.exit(main())
