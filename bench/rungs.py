"""A recorded front search replayed under other ParetoASHA rungs: the trial time each would have trained and the
front it would have kept.

    python -m bench rungs [--table bench/tables/front_cpu.json | --search RESULTS/student/search [--save FILE]]

Reads every trial's learning curve (validation F1, seconds and parameters per epoch) from a table it saved
(``--save``; ``bench/tables/front_cpu.json`` holds the README's 40-trial front under rungs 3 and 6 of 10) or from a
front search's Tune folder (each trial's ``progress.csv``, with the search's ``search_settings.yaml``), and runs the
same trials, in the order they started and as many at once as the search packed, through tuner's own ``ParetoASHA``
under each candidate ``SearchMethod``: a trial trains epoch by epoch on its recorded times until the scheduler stops
it. It reports each candidate's trial time (the wall time its slots would take, without Ray's start), its front's
hypervolume in (parameter share of the teacher, validation F1), and the epochs it would have trained beyond what the
record holds (their F1 is held at the last recorded epoch's, their time at the trial's mean epoch). The configs are
the recorded search's, so this measures the scheduler alone: under other rungs TPE would have seen other scores and
proposed other configs.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (ROOT, BenchError, OneLineParser, command_line, measure_and_publish,  # noqa: E402
                          output_flags, settle_outputs)
from tuner.figures import headline  # noqa: E402

DEFAULT_TABLE = ROOT / "bench" / "tables" / "front_cpu.json"
# (label, SearchMethod fields): the recorded default first, each other one held against it. The rung epochs
# follow from the fields and the record's epochs (``SearchMethod.front_rungs``); the report gives them
CANDIDATES = (("first rung at a quarter of the epochs, a third goes on", {"front_grace_share": 0.25}),
              ("first rung at a fifth, a third goes on", {"front_grace_share": 0.2}),
              ("first rung at a tenth, a third goes on", {"front_grace_share": 0.1}),
              ("first rung at a tenth, a quarter goes on", {"front_grace_share": 0.1, "front_reduction_factor": 4}))


def read_curves(search: Path) -> list[dict]:
    """Each trial's ``{"trial", "parameters", "f1": [...], "seconds": [...]}`` by epoch, in the order they started."""
    import pandas as pd

    trials = []
    for progress in sorted(search.glob("*/progress.csv")):
        rows = pd.read_csv(progress)
        if "rereport" in rows:  # a rung epoch reported twice (tuner.search's _trial): its first report counts
            rows = rows[rows["rereport"] != True]  # noqa: E712 (a column of bools and NaN)
        rows = rows.drop_duplicates("epoch").sort_values("epoch")
        if rows.empty or list(rows["epoch"]) != list(range(1, len(rows) + 1)):
            raise BenchError(f"{progress}: epochs {list(rows['epoch'])} are not 1, 2, ... (a damaged record)")
        trials.append({"trial": progress.parent.name, "start": float(rows["timestamp"].iloc[0]) - float(
            rows["time_this_iter_s"].iloc[0]), "parameters": int(rows["parameters"].iloc[0]),
            "f1": [float(v) for v in rows["val_f1"]], "seconds": [float(v) for v in rows["time_this_iter_s"]]})
    if not trials:
        raise BenchError(f"{search}: no trial's progress.csv (give a front search's Tune folder, "
                         "RESULTS/student/search)")
    return sorted(trials, key=lambda t: (t["start"], t["trial"]))


def replay(curves: list[dict], method, epochs: int, slots: int, reference: int) -> dict:
    """``curves`` run ``slots`` at a time through a ParetoASHA as ``method`` makes it: the slots' wall time, the
    front's hypervolume, the trial-epochs trained and those past the record."""
    from ray.tune.schedulers import TrialScheduler

    from tuner.config import OBJECTIVES
    from tuner.pareto import hypervolume
    from tuner.search import ParetoASHA

    scheduler = ParetoASHA([OBJECTIVES["f1"], OBJECTIVES["params"]], max_t=epochs, rungs=method.front_rungs(epochs),
                           reduction_factor=method.front_reduction_factor, margin=method.front_margin)
    waiting, running, best, trained, beyond, now = list(curves), [], {}, 0, 0, 0.0

    def start(at: float) -> None:
        trial = waiting.pop(0)
        heapq.heappush(running, (at + trial["seconds"][0], trial["trial"], 1, trial))

    for _ in range(min(slots, len(waiting))):
        start(0.0)
    while running:
        now, name, epoch, trial = heapq.heappop(running)
        recorded = min(epoch, len(trial["f1"]))
        trained, beyond = trained + 1, beyond + (epoch > len(trial["f1"]))
        f1 = trial["f1"][recorded - 1]
        best[name] = (trial["parameters"] / reference, max(best.get(name, (0, 0.0))[1], f1))
        decision = scheduler.on_trial_result(None, SimpleNamespace(trial_id=name),
                                             {"epoch": epoch, OBJECTIVES["f1"][0]: f1,
                                              OBJECTIVES["params"][0]: trial["parameters"]})
        if decision == TrialScheduler.STOP:
            if waiting:
                start(now)
            continue
        seconds = trial["seconds"]
        heapq.heappush(running, (now + (seconds[epoch] if epoch < len(seconds) else sum(seconds) / len(seconds)),
                                 name, epoch + 1, trial))
    return {"wall_seconds": now, "hypervolume": round(hypervolume(list(best.values())), 4), "epochs": trained,
            "beyond_record": beyond}


def read_record(args) -> dict:
    """The curves and the settings they were searched under: from ``--search`` (a Tune folder, its stage folder's
    search_settings.yaml and the teacher it names), or from ``--table``."""
    if args.search is None:
        try:
            table = json.loads(args.table.read_text())
            return {key: table[key] for key in ("trials", "epochs", "slots", "teacher_parameters")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"{args.table}: not a curves table saved by --save ({exc})") from None
    stage_dir = args.search.parent
    try:
        settings = yaml.safe_load((stage_dir / "search_settings.yaml").read_text())
        teacher = json.loads((Path(settings["teacher"]) / "result.json").read_text())["parameters"]
        epochs, slots = settings["profile"]["student_epochs"], settings["packing"]["trials_at_once"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{stage_dir}: no readable search_settings.yaml with its teacher, student_epochs and "
                         f"packing ({exc})") from None
    return {"trials": read_curves(args.search), "epochs": epochs, "slots": slots, "teacher_parameters": teacher}


def measure(args) -> dict:
    from tuner.search import DEFAULT_METHOD

    found = read_record(args)
    if getattr(args, "save", None):
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(found, indent=1) + "\n")
    curves, epochs, slots, teacher = (found[key] for key in ("trials", "epochs", "slots", "teacher_parameters"))
    rows = []
    for label, fields in CANDIDATES:
        method = dataclasses.replace(DEFAULT_METHOD, **fields)
        rows.append({"label": label, "fields": fields, "rungs": sorted(method.front_rungs(epochs)),
                     "default": method == DEFAULT_METHOD, **replay(curves, method, epochs, slots, teacher)})
    return {"search": str(args.search or args.table), "trials": len(curves), "epochs": epochs, "slots": slots,
            "teacher_parameters": teacher, "recorded_trial_seconds": round(sum(sum(c["seconds"]) for c in curves)),
            "candidates": rows}


def report(record: dict, started: str, minutes: float, command: str) -> str:
    base = record["candidates"][0]
    lines = ["# A front search replayed under other ParetoASHA rungs", "",
             f"- command: `{command}`", f"- run: {started}, {minutes:.1f} minutes",
             f"- record: `{record['search']}`: {record['trials']} trials of up to {record['epochs']} epochs, "
             f"{record['slots']} at once, {record['recorded_trial_seconds']} trial-seconds recorded", "",
             "| setting | trial time, min | / first row's | validation hypervolume | minus first row's | "
             "trial-epochs | past the record | rung epochs |", "|---|---|---|---|---|---|---|---|"]
    for row in record["candidates"]:
        lines.append(f"| {row['label']} | {row['wall_seconds'] / 60:.1f} | "
                     f"{row['wall_seconds'] / base['wall_seconds']:.2f}x | {row['hypervolume']:.4f} | "
                     f"{row['hypervolume'] - base['hypervolume']:+.4f} | {row['epochs']} | {row['beyond_record']} | "
                     f"{', '.join(map(str, row['rungs']))} |")
    lines += ["", "The configs are the recorded search's: under other rungs TPE would have proposed others."]
    return "\n".join(lines) + "\n"


def figures_of(record: dict, args) -> list:
    """One figure: tuner's default rungs (the first row after the recorded ones that is ``DEFAULT_METHOD``) against
    the recorded ones."""
    base = record["candidates"][0]
    chosen = [row for row in record["candidates"][1:] if row["default"]][:1]
    return [headline(f"{record['trials']}-trial front replayed under the default ParetoASHA rungs "
                     f"({', '.join(map(str, row['rungs']))} of {record['epochs']}) against rungs "
                     f"{', '.join(map(str, base['rungs']))}: trial time",
                     round(row["wall_seconds"] / base["wall_seconds"], 3), "x", args.command,
                     peer=f"the same trials under {base['label']}", started=args.started,
                     inputs=(args.search or args.table,), hypervolume=row["hypervolume"],
                     hypervolume_of_peer=base["hypervolume"], minutes=round(row["wall_seconds"] / 60, 1),
                     beyond_record=row["beyond_record"])
            for row in chosen]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(prog="python -m bench rungs", description=__doc__.strip().splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", type=Path, default=DEFAULT_TABLE,
                        help="curves saved by --save (default: %(default)s)")
    source.add_argument("--search", type=Path, help="a front search's Tune folder (RESULTS/student/search) instead")
    parser.add_argument("--save", type=Path, help="with --search: also save its curves as a table for --table")
    output_flags(parser, "rungs.md")
    args = parser.parse_args(argv)
    if args.search is not None and not args.search.is_dir():
        parser.error(f"--search {args.search}: no such folder")
    if args.save is not None and args.search is None:
        parser.error("--save: give the --search whose curves to save")
    args.command = command_line("rungs.py", argv)
    settle_outputs(parser, args, "rungs.md", args.command)
    return measure_and_publish(args, lambda: measure(args),
                               lambda record, started, minutes: report(record, started, minutes, args.command),
                               lambda record: figures_of(record, args))


if __name__ == "__main__":
    sys.exit(main())
