"""Section 2 of the benchmark at another student length: tuner's student search against online distillation.

    python bench/student_epochs.py --work /tmp/tuner-bench-XXXX [--epochs 10] [--batches {random,length}]
                                   [--peer {default,tuned}] [--batching {random,length} ...]
                                   [--output results/student-epochs.md]

``bench/run_benchmarks.py`` distils at the teacher's epoch count (3 at the cpu sizes), while the cpu profile
trains its student 10 epochs. This runs both sides again at ``--epochs``, per repeat of a kept benchmark work
folder (``run_benchmarks.py --keep``), from that repeat's teacher and with its seed: tuner's student search
(cached teacher logits, ASHA), then the online run (a ``Trainer`` that runs the teacher every step) of the
config tuner found, as section 2 does, once per ``--batching`` with the ``--peer``'s settings. Writes a table of
best validation F1 and per-trial wall time, and splits the per-epoch ratio into what dropping the teacher's
forward gives and what the student's step gives (the online run times its teacher's forward). ``--epochs 3``
re-runs section 2 itself (after a change to the student's training); ``--batches`` sets tuner's side's
batch order, so both orders can be compared against the same online runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCHINGS, DEFAULT_DATA, PEERS, ROOT, OneLineParser, measure_and_publish,  # noqa: E402
                          positive_int, require_conll)
from bench.run_benchmarks import (FULL, QUICK, full_length, machine_lines, measure, online_epoch,  # noqa: E402
                                  search_record, tuner_search)
from tuner.config import BATCH_ORDERS  # noqa: E402


def teachers(work: Path) -> list:
    """(seed, teacher folder) per repeat of a kept benchmark work folder; repeat r ran with seed r - 1."""
    return sorted((int(p.parents[3].name.split("-")[1]) - 1, p.parent)
                  for p in work.glob("repeat-*/tuner/teacher/best/model.safetensors"))


def kept_work_args(parser: argparse.ArgumentParser, argv: list, defaults) -> tuple:
    """Parse a script's flags over a kept work folder: sizes left unset take ``defaults(--quick)``; ``--data``
    must hold CoNLL files and ``--work`` a kept teacher. Returns the arguments and ``teachers(--work)``."""
    args = parser.parse_args(argv)
    for key, value in defaults(args.quick).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    require_conll(parser, args.data)
    args.data, args.argv = args.data.resolve(), argv
    found = teachers(args.work)
    if not found:
        parser.error(f"--work {args.work}: no repeat-*/tuner/teacher/best/model.safetensors (run "
                     "bench/run_benchmarks.py --keep first)")
    return args, found


def run_and_report(args, rows, report) -> int:
    """Run ``rows()`` (the measurements), then write ``--output`` (and its rows as JSON beside it) and print it.
    A failed step ends the script with its one-line message and exit code 1."""
    found = measure_and_publish(args.output, rows, lambda found, started, minutes: report(args, found, started,
                                                                                            minutes))
    return 0 if found is not None else 1


def one_seed(seed: int, teacher: Path, args) -> list:
    """tuner's student search at ``seed``, then one online run of its best config per ``--batching``: a row each."""
    batches = ["--batches", args.batches] if args.batches else []
    work = args.work / f"repeat-{seed + 1}" / "-".join(["student", str(args.epochs), "epochs", *batches[1:]])
    (work / "logs").mkdir(parents=True, exist_ok=True)
    sizes = argparse.Namespace(**dict(vars(args), seed=seed))
    wall = tuner_search("student", sizes, work / "tuner", work / "logs", teacher, *batches)
    student = search_record(work / "tuner" / "student", wall)
    full = full_length(student["trials"], args.epochs)
    tuner_train = statistics.mean(line["train_seconds"] for t in full for line in t) if full else float("nan")
    tuner = {"seed": seed, "tuner_f1": student["best_val_f1"],
             "tuner_trial": statistics.mean(t[-1]["time_total_s"] for t in full) if full else float("nan"),
             "tuner_curve": max(full, key=lambda t: max(x["val_f1"] for x in t), default=[])}
    rows = []
    for batching in args.batching:
        online = measure("hf_peer", "distill", sizes, work, "--teacher", teacher, "--student",
                         work / "tuner" / "student" / "best", "--peer", args.peer, "--batching", batching,
                         name=f"hf_peer-distill-{args.peer}-{batching}")
        online_train, teacher_forward = online_epoch(online)
        rows.append({**tuner, "batching": batching, "online_f1": online["best_val_f1"],
                     "online_trial": online["trial_wall_seconds"],
                     # the training ratio, online / tuner per epoch, is the product of these two factors
                     "teacher_factor": online_train / (online_train - teacher_forward),
                     "step_factor": (online_train - teacher_forward) / tuner_train,
                     "teacher_share": teacher_forward / online_train,
                     "online_curve": online["val_f1_per_epoch"]})
    return rows


def report(args, rows: list, started: str, minutes: float) -> str:
    lines = [f"# Student search vs online distillation at {args.epochs} epochs", "",
             f"- command: `python bench/student_epochs.py {' '.join(map(str, args.argv))}`",
             f"- run: {started}, {minutes:.0f} minutes", *machine_lines(),
             f"- teachers and seeds: `{args.work}`'s repeats; {args.trials} trials per search, "
             f"{args.train_sentences} train and {args.eval_sentences} validation sentences",
             f"- tuner's student batches: {args.batches or 'its default (random, unpadded)'}; the online runs: "
             f"the {args.peer} peer (`bench/hf_peer.py distill --peer {args.peer}`), one per batching",
             "- the online run's training time per epoch over tuner's is the product of two factors: dropping the "
             "teacher's forward (online epoch / online epoch without it; what caching the logits alone can give) and "
             "the student's step (the online epoch without the teacher's forward / tuner's epoch)", "",
             "| seed | online batching | tuner best F1 | online F1 (tuner's config) | tuner - online, points "
             "| tuner trial, s | online trial, s | online / tuner | online teacher forward, share of its epoch "
             "| factor: no teacher forward | factor: the student's step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    median = statistics.median

    def line(seed, batching, group):
        return (f"| {seed} | {batching} | {median(r['tuner_f1'] for r in group):.4f} | "
                f"{median(r['online_f1'] for r in group):.4f} | "
                f"{100 * median(r['tuner_f1'] - r['online_f1'] for r in group):+.2f} | "
                f"{median(r['tuner_trial'] for r in group):.1f} | {median(r['online_trial'] for r in group):.1f} | "
                f"{median(r['online_trial'] / r['tuner_trial'] for r in group):.2f}x | "
                f"{median(r['teacher_share'] for r in group):.1%} | {median(r['teacher_factor'] for r in group):.2f}x | "
                f"{median(r['step_factor'] for r in group):.2f}x |")

    lines += [line(r["seed"], r["batching"], [r]) for r in rows]
    lines += [line("median", batching, [r for r in rows if r["batching"] == batching]) for batching in args.batching]
    lines += ["", "Validation F1 per epoch (tuner: its best full-length trial; online: the same config):", ""]
    for r in rows:
        if r["batching"] == args.batching[0]:  # one tuner search per seed, whatever the online batchings
            tuner = ", ".join(f"{x['val_f1']:.4f}" for x in r["tuner_curve"])
            lines.append(f"- seed {r['seed']}, tuner: {tuner}")
        online = ", ".join(f"{f:.4f}" for f in r["online_curve"])
        lines.append(f"- seed {r['seed']}, online ({r['batching']}): {online}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="python bench/student_epochs.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a work folder kept by run_benchmarks.py --keep")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (1 epoch, "
                                                                 "2 trials, the quick benchmark's sentences)")
    parser.add_argument("--epochs", type=positive_int, help="student epochs, both sides (default 10, quick 1)")
    parser.add_argument("--trials", type=positive_int, help=f"default {FULL['trials']}")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--eval-sentences", type=positive_int, help=f"default {FULL['eval_sentences']}")
    parser.add_argument("--batches", choices=BATCH_ORDERS,
                        help="tuner's student batches (default: tuner's own default, random); the online runs' "
                             "are set by --batching")
    parser.add_argument("--peer", choices=PEERS, default="default",
                        help="the online runs' settings (bench/hf_peer.py: default or tuned; default %(default)s)")
    parser.add_argument("--batching", choices=BATCHINGS, nargs="+", default=["random"],
                        help="the online runs' batchings, one run each against the same tuner search "
                             "(random and/or length, group_by_length; default random)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "student-epochs.md")
    args, found = kept_work_args(parser, argv, lambda quick: dict(QUICK if quick else FULL,
                                                                  epochs=QUICK["epochs"] if quick else 10))
    return run_and_report(args, lambda: [row for seed, teacher in found for row in one_seed(seed, teacher, args)],
                          report)


if __name__ == "__main__":
    sys.exit(main())
