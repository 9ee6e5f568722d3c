"""Which teacher layers a student keeps (``layer_reach``): front members' configs trained again at each reach,
paired over training seeds.

    python bench/layer_choice.py --results R --members NAME [NAME ...] [--teacher T] [--reaches 1 0] [--seeds 2]
                                 [--output FILE.md]

``R`` is the results folder of a front search (``--objectives f1,params``); each ``NAME`` a row of
``R/student/pareto.csv``. Every member's config is trained for the stage's full epochs once per reach and training
seed (the search's seed, then +100, +200, ...: initialisation order, dropout and batches; the split and the
teacher stay the search's), its best validation epoch kept and scored on the test split. Each row pairs a reach
with the first one (``--reaches``) at the same member and seed; ``T`` is the teacher (default ``R/teacher/best``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OneLineParser, positive_int, publish, teacher_result  # noqa: E402
from tuner import registry  # noqa: E402
from tuner.cli import entry_point  # noqa: E402
from tuner.config import METRIC  # noqa: E402
from tuner.retrain import entry_from, prepare  # noqa: E402

SEED_STEP = 100  # training seeds: the search's, then +100, +200, ...


def train_member(entry: dict, results: Path, teacher: Path | None, reaches: list[float], seeds: int) -> list[dict]:
    """One row per (reach, training seed): the member's config at that reach, its best validation epoch and the
    test F1 of that epoch's model. The teacher's logits (and hidden states) are computed once per member."""
    run = prepare(registry.by_name("student"), entry, results, None, teacher,
                  f"{results}/best_configs.yaml: student.pareto[{entry['name']}]")
    rows = []
    for offset in range(seeds):
        for reach in reaches:
            seed, started, kept = entry["seed"] + SEED_STEP * offset, time.perf_counter(), [None]
            best, curve = run.best_epoch({**entry["hyperparameters"], "layer_reach": reach}, seed,
                                         keep=lambda model: kept.__setitem__(-1, copy.deepcopy(model)))
            rows.append({"member": entry["name"], "reach": reach, "train_seed": seed, "val_f1": best[METRIC],
                         "epoch": best["epoch"], "test_f1": run.test_f1(kept[-1]), "val_f1_per_epoch": curve,
                         "minutes": (time.perf_counter() - started) / 60})
    return rows


def report(rows: list[dict], reaches: list[float], teacher_test: float, command: str) -> str:
    base = reaches[0]
    lines = [f"- command: `{command}`", "",
             "| member | training seed | " + " | ".join(f"reach {r:g}: validation / test F1" for r in reaches)
             + "".join(f" | reach {r:g} - reach {base:g}, test points" for r in reaches[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(reaches) - 1)]
    gains = {r: [] for r in reaches[1:]}
    for member, seed in dict.fromkeys((row["member"], row["train_seed"]) for row in rows):
        by_reach = {row["reach"]: row for row in rows if (row["member"], row["train_seed"]) == (member, seed)}
        cells = [f"{by_reach[r]['val_f1']:.4f} / {by_reach[r]['test_f1']:.4f}" for r in reaches]
        for r in reaches[1:]:
            gains[r].append(100 * (by_reach[r]["test_f1"] - by_reach[base]["test_f1"]))
            cells.append(f"{gains[r][-1]:+.2f}")
        lines.append(f"| {member} | {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    for r, values in gains.items():
        lines.append(f"- reach {r:g} against {base:g}: mean {statistics.mean(values):+.2f} test points over "
                     f"{len(values)} pairs (min {min(values):+.2f}, max {max(values):+.2f})")
    best = {r: max(row["test_f1"] for row in rows if row["reach"] == r) / teacher_test for r in reaches}
    lines.append("- best test F1 as a share of the teacher's (" + f"{teacher_test:.4f}): "
                 + ", ".join(f"reach {r:g} {share:.3f}x" for r, share in best.items()))
    return "\n".join(lines) + "\n"


@entry_point
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="python bench/layer_choice.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a front search's results folder")
    parser.add_argument("--members", nargs="+", required=True, help="front members (names in pareto.csv)")
    parser.add_argument("--teacher", type=Path, help="its teacher (default: RESULTS/teacher/best)")
    parser.add_argument("--reaches", type=float, nargs="+", default=[1.0, 0.0],
                        help="layer_reach values, the first the one the others are paired with (default: 1 0)")
    parser.add_argument("--seeds", type=positive_int, default=2, help="training seeds per member (default 2)")
    parser.add_argument("--output", type=Path, help="markdown report; its .json beside it")
    args = parser.parse_args(argv)
    if len(args.reaches) < 2 or not all(0 <= r <= 1 for r in args.reaches):
        parser.error("--reaches: two or more layer_reach values, each in [0, 1]")
    config_file = args.results / "best_configs.yaml"
    if not config_file.is_file():
        parser.error(f"--results {args.results}: no best_configs.yaml (a front search's results folder?)")
    teacher_test = teacher_result(parser, args.teacher or args.results / "teacher" / "best")["test_f1"]
    entries = [dict(entry_from(config_file, "student", name), name=name) for name in args.members]
    rows = [row for entry in entries
            for row in train_member(entry, args.results, args.teacher, args.reaches, args.seeds)]
    text = report(rows, args.reaches, teacher_test, "python bench/layer_choice.py " + " ".join(map(str, argv)))
    publish(args.output, text, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
