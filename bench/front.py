"""One F1-vs-size front search against single-objective student searches at fixed budgets, side by side.

    python bench/front.py --teacher results/teacher/best [--trials 40] [--budgets 0.30 0.22 0.15]
                          [--front-max 0.60] [--train-sentences N] [--space-dir DIR] [--output results/front.md]
                          [--front-only] [--quick]

From one searched teacher (its data, split and seed), it runs ``tuner.run --stage student --objectives
f1,params`` with ``--trials`` trials under ``--front-max`` of the teacher's parameters, then one ``tuner.run
--stage student`` (F1 alone) per budget, sharing the same total trial count (``--trials`` divided among the
budgets, the remainder to the first ones; ``--front-only`` skips them). ``--train-sentences`` trains every
search on fewer (or more) training sentences than its profile, to fit the comparison in less time; ``--space-dir``
gives every search the same other ``student.yaml``. It reports,
per budget, the best front member under it against that budget's own search (validation and test F1), the
wall time of each side, and the front's members as shares of the teacher's size and F1; its figures (through
``tuner.figures``) hold each budget's best member against the teacher and the goals. ``--quick`` is its smoke mode
(the smoke profile's tiny model, seconds to minutes, in a temporary folder; the slow tests run it).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (ROOT, BenchError, OneLineParser, output_flags, positive_int,  # noqa: E402
                          publish_from_work, teacher_result)
from tuner.figures import headline  # noqa: E402

PROFILE = {False: ["--profile", "cpu"], True: ["--profile", "smoke", "--model", "minilm"]}
SHARE_GOALS = {0.30: 0.97, 0.22: 0.93, 0.15: 0.85}  # a front member under each share of the teacher: its test F1
MEMBERS_GOAL = 4  # front members between 15% and 60% of the teacher's parameters
F1_POINTS = 0.5  # a front member against a budgeted search: within half a point of its test F1


def search(name: str, work: Path, teacher: Path, args, *extra) -> dict:
    """One ``tuner.run --stage student`` in ``work/name``: its wall time and its results folder."""
    results = work / name
    argv = [sys.executable, "-m", "tuner.run", "--stage", "student", "--teacher", teacher, "--data", args.data,
            "--results-dir", results, "--quiet", *PROFILE[args.quick], *args.sizes, *extra]
    started = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"{name}: tuner.run exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return {"wall_seconds": wall, "results": results}


def read_best(results: Path) -> dict:
    return json.loads((results / "student" / "best" / "result.json").read_text())


def run(args) -> dict:
    teacher = args.teacher_record
    size = teacher["parameters"]
    args.data = teacher["data"] if not teacher["data"].startswith("hub:") else "conll2003"
    args.sizes = ["--seed", teacher["seed"], "--split", teacher["split"]]
    if args.quick:
        args.sizes += ["--train-sentences", 120, "--eval-sentences", 60, "--test-sentences", 60, "--epochs", 2]
    if args.train_sentences:
        args.sizes += ["--train-sentences", args.train_sentences]
    if args.space_dir:
        args.sizes += ["--space-dir", args.space_dir.resolve()]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    front = search("front", work, args.teacher, args, "--objectives", "f1,params", "--trials", args.trials,
                   "--max-params", int(args.front_max * size))
    singles = {} if args.front_only else {
        budget: dict(search(f"single-{budget:.2f}", work, args.teacher, args, "--trials", trials,
                            "--max-params", int(budget * size)), trials=trials)
        for budget, trials in zip(args.budgets, trial_shares(args.trials, len(args.budgets)))}
    with open(front["results"] / "student" / "pareto.csv") as handle:
        members = [dict(row, parameters=int(row["parameters"]), val_f1=float(row["val_f1"]),
                        test_f1=float(row["test_f1"])) for row in csv.DictReader(handle)]
    rows = []
    for budget, single in singles.items():
        best = read_best(single["results"])
        under = [m for m in members if m["parameters"] <= budget * size]
        chosen = max(under, key=lambda m: m["val_f1"]) if under else None
        rows.append({"budget": budget, "single_val_f1": best["val_f1"], "single_test_f1": best["test_f1"],
                     "single_parameters": best["parameters"], "single_wall_seconds": single["wall_seconds"],
                     "single_trials": single["trials"],
                     "front_val_f1": chosen and chosen["val_f1"], "front_test_f1": chosen and chosen["test_f1"],
                     "front_parameters": chosen and chosen["parameters"], "front_member": chosen and chosen["name"]})
    return {"teacher": {"parameters": size, "test_f1": teacher["test_f1"], "val_f1": teacher["val_f1"],
                        "folder": str(args.teacher)},
            "front": {"trials": args.trials, "max_share": args.front_max, "wall_seconds": front["wall_seconds"],
                      "members": members},
            "train_sentences": args.train_sentences, "budgets": rows}


def trial_shares(trials: int, budgets: int) -> list[int]:
    """The budgeted searches' trials: the front's total as evenly as it divides, the remainder to the first ones,
    at least one each."""
    return [max(1, trials // budgets + (i < trials % budgets)) for i in range(budgets)]


def share(value, whole) -> str:
    return f"{value / whole:.0%}"


def report(record: dict, command: str, started: str, minutes: float) -> str:
    teacher, front = record["teacher"], record["front"]
    size, f1 = teacher["parameters"], teacher["test_f1"]
    single_wall = sum(row["single_wall_seconds"] for row in record["budgets"])
    lines = [
        "# The F1-vs-size front against single-objective searches", "",
        f"- command: `{command}`", f"- run: {started}, {minutes:.1f} minutes",
        f"- teacher: {teacher['folder']}, {size:,} parameters, test F1 {f1:.4f} (validation {teacher['val_f1']:.4f})",
        f"- front search: {front['trials']} trials, `--objectives f1,params`, shapes up to "
        f"{front['max_share']:.0%} of the teacher; {front['wall_seconds'] / 60:.1f} minutes",
        f"- training sentences per search: {record.get('train_sentences') or 'as the profile sets'}",
        (f"- single-objective searches: {' + '.join(str(row['single_trials']) for row in record['budgets'])} "
         f"trials at the budgets, F1 alone (the deepest, then widest, student under the budget); "
         f"{single_wall / 60:.1f} minutes in all"
         if record["budgets"] else "- single-objective searches: not run (`--front-only`)")]
    if record["budgets"]:
        lines += ["", "| budget | front: best member under it (val / test F1) | its size | single search "
                  "(val / test F1) | its size | front - single, test F1 points | single search wall time, min |",
                  "|---|---|---|---|---|---|---|"]
    for row in record["budgets"]:
        if row["front_member"] is None:
            front_cells = "no member | -"
            gap = "-"
        else:
            front_cells = (f"{row['front_val_f1']:.4f} / {row['front_test_f1']:.4f} | "
                           f"{share(row['front_parameters'], size)}")
            gap = f"{(row['front_test_f1'] - row['single_test_f1']) * 100:+.2f}"
        lines.append(f"| {row['budget']:.0%} | {front_cells} | {row['single_val_f1']:.4f} / "
                     f"{row['single_test_f1']:.4f} | {share(row['single_parameters'], size)} | {gap} | "
                     f"{row['single_wall_seconds'] / 60:.1f} |")
    lines += ["", f"Front members ({len(front['members'])}), as shares of the teacher:", "",
              "| member | parameters | share | validation F1 | test F1 | test F1 / teacher's | batch 1, ms |",
              "|---|---|---|---|---|---|---|"]
    for member in front["members"]:
        lines.append(f"| {member['name']} | {member['parameters']:,} | {share(member['parameters'], size)} | "
                     f"{member['val_f1']:.4f} | {member['test_f1']:.4f} | {member['test_f1'] / f1:.3f} | "
                     f"{float(member['batch_1_median_ms']):.2f} |")
    lines += ["", f"Members between 15% and 60% of the teacher's parameters: {len(between(record))}."]
    for limit in SHARE_GOALS:
        best = best_under(record, limit)
        lines.append(f"At {limit:.0%} or less of the teacher: " + (f"best test F1 {best:.4f}, {best / f1:.3f}x the "
                                                                     "teacher's." if best is not None else "no member."))
    return "\n".join(lines) + "\n"


def between(record: dict) -> list:
    size = record["teacher"]["parameters"]
    return [m for m in record["front"]["members"] if 0.15 * size <= m["parameters"] <= 0.60 * size]


def best_under(record: dict, limit: float) -> float | None:
    """The best test F1 of a front member at ``limit`` of the teacher's parameters or less."""
    return max((m["test_f1"] for m in record["front"]["members"]
                if m["parameters"] <= limit * record["teacher"]["parameters"]), default=None)


def front_figures(record: dict, args) -> list:
    """The front against the teacher at each share of SHARE_GOALS and its members' count; with the budgeted
    searches, the front against each and the two sides' wall times."""
    trials, teacher = record["front"]["trials"], record["teacher"]
    run = {"command": args.command, "started": args.started, "inputs": (args.teacher,)}
    sizes = f"{trials} trials, front up to {record['front']['max_share']:.0%}" + (
        f", {record['train_sentences']:,} training sentences" if record["train_sentences"] else "")
    entries = []
    for limit, goal in SHARE_GOALS.items():
        best = best_under(record, limit)
        value = None if best is None else round(best / teacher["test_f1"], 3)
        entries.append(headline(f"front at <= {limit:.0%} of the teacher's parameters, test F1 / teacher's ({sizes})",
                                value, "x", goal=f">= {goal}x", met=value is not None and value >= goal,
                                peer="the same run's teacher", **run))
    entries.append(headline(f"front members between 15% and 60% of the teacher's parameters ({sizes})",
                            len(between(record)), " members", goal=f">= {MEMBERS_GOAL}",
                            met=len(between(record)) >= MEMBERS_GOAL, peer="the same run's teacher", **run))
    budgeted = f"F1 alone, {' + '.join(str(row['single_trials']) for row in record['budgets'])} trials"
    for row in record["budgets"]:
        gap = None if row["front_member"] is None else round(100 * (row["front_test_f1"] - row["single_test_f1"]), 2)
        entries.append(headline(f"front vs a budgeted F1 search at <= {row['budget']:.0%} of the teacher (test F1, "
                                f"{sizes})", gap, " points", goal=f"within {F1_POINTS} points",
                                met=gap is not None and gap >= -F1_POINTS,
                                peer="a single-objective search at that budget", peer_settings=budgeted,
                                front_member=row["front_member"], budgeted_test_f1=row["single_test_f1"], **run))
    if record["budgets"]:
        ratio = record["front"]["wall_seconds"] / sum(row["single_wall_seconds"] for row in record["budgets"])
        entries.append(headline(f"front search wall time / the budgeted searches' ({sizes})", round(ratio, 3), "x",
                                goal="<= 1x", met=ratio <= 1, peer="a single-objective search at each budget",
                                peer_settings=budgeted, **run))
    return entries


def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/front.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a searched teacher's best folder")
    parser.add_argument("--trials", type=positive_int, default=40, help="the front search's trials (and the total "
                                                                        "of the single-objective searches')")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.30, 0.22, 0.15],
                        help="single-objective budgets, as shares of the teacher's parameters")
    parser.add_argument("--front-max", type=float, default=0.60, help="the front search's budget, as a share")
    parser.add_argument("--work", type=Path, help="where the searches go (default: a folder beside --output)")
    parser.add_argument("--train-sentences", type=positive_int,
                        help="every search's training sentences (default: the profile's)")
    parser.add_argument("--space-dir", type=Path,
                        help="a folder whose student.yaml every search uses (default: search_spaces/)")
    output_flags(parser, "front.md")
    parser.add_argument("--front-only", action="store_true",
                        help="run the front search alone, without the single-objective searches: its members "
                             "against the teacher and the budgets")
    parser.add_argument("--quick", action="store_true", help="smoke mode: a few sentences, 2 epochs")
    args = parser.parse_args(argv)
    args.teacher_record = teacher_result(parser, args.teacher)
    if args.space_dir and not (args.space_dir / "student.yaml").is_file():
        parser.error(f"--space-dir {args.space_dir}: no student.yaml")
    if not all(0 < b <= 1 for b in args.budgets + [args.front_max]):
        parser.error("--budgets and --front-max are shares of the teacher's parameters, in (0, 1]")
    return publish_from_work(parser, args, "front.py", argv if argv is not None else sys.argv[1:], run, report,
                             front_figures)


if __name__ == "__main__":
    sys.exit(main())
