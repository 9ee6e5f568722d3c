"""Section 2 of the peers benchmark again, on a kept work folder: tuner's student against online distillation.

    python bench/student.py --work W [--epochs 10] [--batches {random,length}] [--peer {default,tuned}]
                            [--batching {random,length} ...]              # the search, at another length
    python bench/student.py --work W --seeds 3 [--seed-offset 0] [--reuse]  # the F1 question, paired over seeds

``W`` is a work folder kept by ``python -m bench peers --keep``; every repeat's teacher and seed are used. Both
sides share the repeat's teacher, sentences and seed; the online side is ``hf_peer.py distill`` (a Trainer that runs
the teacher every step) with ``--peer``'s settings.

- the search (default): tuner's student search (cached teacher logits, ASHA) at ``--epochs`` (default 10, the cpu
  profile's student length, where section 2 distils at the teacher's 3; ``--epochs 3`` re-runs section 2 itself),
  then one online run of the config it found per ``--batching``. It reports best validation F1 and per-trial wall
  time, and splits the per-epoch ratio into what dropping the teacher's forward gives (the online run times it)
  and what the student's step gives. ``--batches`` sets tuner's side's batch order, in a folder of its own.
- ``--seeds N``: a single student run's F1 moves by a point or more with its seed alone, so this pairs both sides
  over N student seeds (the repeat's own, then +10, +20, ...; ``--seed-offset k`` starts at +10k): the repeat's
  best student config as tuner's trial (``probes.py student-trial``: teacher logits once, then the trial as the
  search runs it) and as the online run, then each pair's difference, their mean with a 95% interval (Student's
  t) and each side's spread. Pairs are kept in ``W`` per size; ``--reuse`` reads those already measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCHINGS, DEFAULT_DATA, PEERS, BenchError, OneLineParser, command_line,  # noqa: E402
                          int_at_least, measure_and_publish, output_flags, positive_int,
                          require_conll, settle_outputs)
from bench.run_benchmarks import (FULL, GOALS, QUICK, full_length, machine_lines, measure,  # noqa: E402
                                  online_epoch, search_record, tuner_search)
from tuner.config import BATCH_ORDERS  # noqa: E402
from tuner.figures import headline  # noqa: E402

SEED_STEP = 10  # student seeds seed, seed + 10, ...: apart from every repeat's own seed (0, 1, 2)
SEARCH_EPOCHS = 10  # the cpu profile's student length
F1_POINTS = 0.5  # "equal F1": within half a point


def teachers(work: Path) -> list:
    """(seed, teacher folder) per repeat of a kept benchmark work folder; repeat r ran with seed r - 1."""
    return sorted((int(p.parents[3].name.split("-")[1]) - 1, p.parent)
                  for p in work.glob("repeat-*/tuner/teacher/best/model.safetensors"))


def online_flags(args, batching: str) -> list:
    return ["--peer", args.peer, "--batching", batching]


# --- the search, at --epochs ------------------------------------------------------------------------------------

def one_search(seed: int, teacher: Path, args) -> list:
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
                         work / "tuner" / "student" / "best", *online_flags(args, batching),
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


def search_report(args, rows: list, started: str, minutes: float) -> str:
    lines = [f"# Student search vs online distillation at {args.epochs} epochs", "",
             f"- command: `{args.command}`", f"- run: {started}, {minutes:.0f} minutes", *machine_lines(),
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


def search_figures(args, rows: list) -> list:
    """Per online batching: online / tuner trial wall time, the median over seeds, its goal read against the
    tuned peer."""
    entries = []
    for batching in args.batching:
        group = [r for r in rows if r["batching"] == batching]
        value = statistics.median(r["online_trial"] / r["tuner_trial"] for r in group)
        f1 = 100 * statistics.median(r["tuner_f1"] - r["online_f1"] for r in group)
        entries.append(headline(
            f"student trial speed, online distillation / tuner (cpu profile, {args.epochs} epochs, median of "
            f"{len(group)} seeds), {batching} batches", round(value, 3), "x", args.command,
            goal=f">= {GOALS['student']:.0f}x, F1 within {F1_POINTS} points (issue 20, against the tuned peer)",
            met=value >= GOALS["student"] and f1 >= -F1_POINTS if args.peer == "tuned" else None, peer=args.peer,
            peer_settings=f"bench/hf_peer.py distill --peer {args.peer} --batching {batching}", seeds=len(group),
            inputs=(args.work,), started=args.started, f1_points=round(f1, 2),
            teacher_forward_share=round(statistics.median(r["teacher_share"] for r in group), 3),
            bound_from_caching=round(statistics.median(r["teacher_factor"] for r in group), 3),
            student_step_factor=round(statistics.median(r["step_factor"] for r in group), 3)))
    return entries


# --- paired over student seeds ----------------------------------------------------------------------------------

def one_pair(seed: int, teacher: Path, train_seed: int, args) -> dict:
    # one folder per size, so a --quick run never overwrites (or --reuse reads) a full-size pair
    work = args.work / f"repeat-{seed + 1}" / f"student-seeds-{args.train_sentences}-sentences-{args.epochs}-epochs"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    sizes = argparse.Namespace(**dict(vars(args), seed=seed))
    student = teacher.parent.parent / "student" / "best"  # the repeat's section 2 search
    if not (student / "result.json").is_file():
        raise BenchError(f"{student}: no result.json (the repeat's student search did not finish)")
    extra = ("--teacher", teacher, "--student", student, "--train-seed", train_seed)
    kept = [work / f"tuner-{train_seed}.json", work / f"online-{args.peer}-{args.batching[0]}-{train_seed}.json"]
    if args.reuse and all(path.is_file() for path in kept):  # measured by an earlier run on this folder
        tuner, online = (json.loads(path.read_text()) for path in kept)
    else:
        tuner = measure("probes", "student-trial", sizes, work, *extra, name=kept[0].stem)
        online = measure("hf_peer", "distill", sizes, work, *extra, *online_flags(args, args.batching[0]),
                         name=kept[1].stem)
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


def per_teacher_spread(rows: list, key: str) -> str:
    groups = {}
    for r in rows:
        groups.setdefault(r["seed"], []).append(r[key])
    if any(len(v) < 2 for v in groups.values()):
        return "n/a (one seed per teacher)"
    spreads = [statistics.stdev(v) * 100 for v in groups.values()]
    return f"{', '.join(f'{s:.2f}' for s in spreads)} (mean {statistics.mean(spreads):.2f})"


def seeds_report(args, rows: list, started: str, minutes: float) -> str:
    differences = [100 * (r["tuner_f1"] - r["online_f1"]) for r in rows]
    mean, half = interval(differences)
    median = statistics.median
    lines = ["# Student: cached teacher logits (tuner) vs online distillation, paired over student seeds", "",
             f"- command: `{args.command}`", f"- run: {started}, {minutes:.0f} minutes", *machine_lines(),
             f"- from `{args.work}`: each repeat's teacher, sentences and best student config; {args.seeds} student "
             f"seed(s) per repeat (from the repeat's seed + {SEED_STEP * args.seed_offset}), {args.epochs} epoch(s), "
             f"{args.train_sentences} train and {args.eval_sentences} validation sentences; the online runs: the "
             f"{args.peer} peer, {args.batching[0]} batches", "",
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
              "one process at a time, outside Ray)", "", "Validation F1 per epoch:", ""]
    for r in rows:
        lines.append(f"- seed {r['seed']}, student seed {r['train_seed']}: tuner "
                     f"{', '.join(f'{x:.4f}' for x in r['tuner_curve'])}; online "
                     f"{', '.join(f'{x:.4f}' for x in r['online_curve'])}")
    return "\n".join(lines) + "\n"


def seeds_figures(args, rows: list) -> list:
    mean, half = interval([100 * (r["tuner_f1"] - r["online_f1"]) for r in rows])
    return [headline(
        f"student best validation F1, tuner (cached teacher logits) - online distillation, mean over paired student "
        f"seeds ({args.epochs} epochs)", round(mean, 2), " points", args.command,
        goal=f"within {F1_POINTS} points", met=mean >= -F1_POINTS, peer=args.peer,
        peer_settings=f"bench/hf_peer.py distill --peer {args.peer} --batching {args.batching[0]}, the same config, "
                      "teacher, sentences and student seed", seeds=len(rows), inputs=(args.work,),
        started=args.started,
        interval_95=None if math.isnan(half) else [round(mean - half, 2), round(mean + half, 2)])]


# --- command line -----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(prog="python bench/student.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a work folder kept by run_benchmarks.py --keep")
    parser.add_argument("--seeds", type=positive_int,
                        help="pair tuner's trial and the online run of each repeat's best config over this many "
                             "student seeds, instead of running the search")
    parser.add_argument("--seed-offset", type=int_at_least(0), default=0,
                        help="with --seeds: start at the repeat's seed + 10 x this (default 0: its own seed)")
    parser.add_argument("--reuse", action="store_true", help="with --seeds: read the pairs an earlier run measured "
                                                              "in --work instead of training them again")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the plumbing (1 epoch, 2 trials, "
                                                                 "the quick benchmark's sentences)")
    parser.add_argument("--epochs", type=positive_int, help=f"student epochs, both sides (default {SEARCH_EPOCHS}; "
                                                            f"with --seeds {FULL['epochs']}, section 2's; quick 1)")
    parser.add_argument("--trials", type=positive_int, help=f"the search's trials (default {FULL['trials']})")
    parser.add_argument("--train-sentences", type=positive_int, help=f"default {FULL['train_sentences']}")
    parser.add_argument("--eval-sentences", type=positive_int, help=f"default {FULL['eval_sentences']}")
    parser.add_argument("--batches", choices=BATCH_ORDERS,
                        help="the search's batches on tuner's side (default: tuner's own, random)")
    parser.add_argument("--peer", choices=PEERS, default="default",
                        help="the online runs' settings (bench/hf_peer.py; default %(default)s)")
    parser.add_argument("--batching", choices=BATCHINGS, nargs="+", default=["random"],
                        help="the online runs' batchings (group_by_length: length), one run each against the same "
                             "search (default random; one with --seeds)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CoNLL files (train.txt)")
    output_flags(parser, "student.md (student-seeds.md with --seeds)")
    args = parser.parse_args(argv)
    paired = args.seeds is not None
    if paired and (args.trials or args.batches or len(args.batching) > 1):
        parser.error("--seeds trains each repeat's best config: no --trials or --batches, and one --batching")
    if not paired and (args.seed_offset or args.reuse):
        parser.error("--seed-offset and --reuse go with --seeds")
    sizes = QUICK if args.quick else FULL
    defaults = dict(sizes, epochs=sizes["epochs"] if args.quick or paired else SEARCH_EPOCHS)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    require_conll(parser, args.data)
    args.data, args.command = args.data.resolve(), command_line("student.py", argv)
    found = teachers(args.work)
    if not found:
        parser.error(f"--work {args.work}: no repeat-*/tuner/teacher/best/model.safetensors (run "
                     "python -m bench peers --keep first)")
    settle_outputs(parser, args, "student-seeds.md" if paired else "student.md", args.command)

    if paired:
        def rows() -> list:
            pairs = [one_pair(seed, teacher, seed + SEED_STEP * j, args)
                     for j in range(args.seed_offset, args.seed_offset + args.seeds) for seed, teacher in found]
            return sorted(pairs, key=lambda r: (r["seed"], r["train_seed"]))
    else:
        def rows() -> list:
            return [row for seed, teacher in found for row in one_search(seed, teacher, args)]

    report, entries = (seeds_report, seeds_figures) if paired else (search_report, search_figures)
    return measure_and_publish(args, rows, lambda done, started, minutes: report(args, done, started, minutes),
                               lambda done: entries(args, done))


if __name__ == "__main__":
    sys.exit(main())
