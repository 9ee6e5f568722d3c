"""How much of a front's F1 at each budget is the choice of member: every trial's kept model of a front search
(``--objectives f1,params``), scored on the whole validation split and on the test split. Per budget (a share of the
teacher's parameters) it gives the model the search picks (the best validation F1 on the profile's sentences), the
one a larger validation split would pick (``--eval-sentences``, default all), and the best any pick could reach
(the best test F1 itself, which no search may select by).

    python bench/front_selection.py --results R [R ...] [--teacher T] [--budgets 0.30 0.22 0.15] [--output FILE.md]

Each ``R`` is a results folder of a front search (``R/student/search`` with every trial's checkpoint, as
``--keep-checkpoints all``, the default, leaves them); ``T`` is its teacher (default ``R/teacher/best``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OneLineParser, positive_int, publish, teacher_result  # noqa: E402
from tuner import registry  # noqa: E402
from tuner.cli import entry_point  # noqa: E402
from tuner.config import METRIC, SIZE_METRIC  # noqa: E402
from tuner.models import load_model, load_tokenizer, model_labels  # noqa: E402
from tuner.task import build_task, recorded_settings  # noqa: E402
from tuner.training import STATE_FILE, evaluate  # noqa: E402


def kept_models(results: Path) -> list[dict]:
    """Every trial's kept checkpoint with the validation F1 and size the search recorded for it."""
    found = []
    for checkpoint in sorted((results / "student" / "search").glob("_trial_*/checkpoint_*")):
        metrics = json.loads((checkpoint / STATE_FILE).read_text())["metrics"]
        found.append({"checkpoint": checkpoint, "trial": checkpoint.parent.name.split("_")[2],
                      "parameters": int(metrics[SIZE_METRIC]), "search_val_f1": metrics[METRIC]})
    return found


def score(results: Path, kept: list[dict], eval_sentences: int | None) -> list[dict]:
    """``kept`` (``kept_models``) scored on the larger validation split and the test split, under the search's settings."""
    stage = registry.by_name("student")
    record = json.loads((results / "student" / "best" / "result.json").read_text())
    settings, _ = recorded_settings(record, stage, results, f"{results}/student/best/result.json")
    larger = dataclasses.replace(settings, profile=dataclasses.replace(settings.profile, eval_sentences=eval_sentences))
    tokenizer = load_tokenizer(str(results / "student" / "best"))
    labels = model_labels(load_model(results / "student" / "best"))
    task = build_task(larger, tokenizer, labels)
    profile = settings.profile
    scored = []
    for entry in kept:
        model = load_model(entry["checkpoint"])
        f1 = {name: evaluate(model, data, labels, profile.eval_batch_size, task.pad_token_id, "cpu",
                             profile.precision)["f1"] for name, data in (("val", task.validation), ("test", task.test))}
        scored.append({**entry, "checkpoint": str(entry["checkpoint"]), "larger_val_f1": f1["val"],
                       "test_f1": f1["test"]})
    return scored


def picks(scored: list[dict], budget: int) -> dict | None:
    """Under ``budget`` parameters: the search's pick, the larger split's pick and the best test F1."""
    under = [s for s in scored if s["parameters"] <= budget]
    if not under:
        return None
    return {"search": max(under, key=lambda s: s["search_val_f1"]),
            "larger": max(under, key=lambda s: s["larger_val_f1"]),
            "best_test": max(under, key=lambda s: s["test_f1"])}


@entry_point
def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/front_selection.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="front searches' results folders")
    parser.add_argument("--teacher", type=Path, help="their teacher (default: RESULTS/teacher/best)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.30, 0.22, 0.15],
                        help="shares of the teacher's parameters")
    parser.add_argument("--eval-sentences", type=positive_int, default=None,
                        help="the larger validation split (default: all)")
    parser.add_argument("--output", type=Path, help="markdown report; its .json beside it")
    args = parser.parse_args(argv)
    if not all(0 < b <= 1 for b in args.budgets):
        parser.error("--budgets are shares of the teacher's parameters, in (0, 1]")
    lines = ["| run | budget | search's pick (its validation F1): test F1 / teacher's | larger validation split's pick "
             "| best test F1 of any kept model |", "|---|---|---|---|---|"]
    record = []
    for results in args.results:
        for path in (results / "student" / "search", results / "student" / "best" / "result.json",
                     results / "student" / "trials.csv"):
            if not path.exists():
                parser.error(f"--results {results}: no {path.relative_to(results)} (a front search's results folder?)")
        with open(results / "student" / "trials.csv") as handle:
            trials = sum(1 for _ in csv.DictReader(handle))
        kept = kept_models(results)
        if len(kept) < trials:
            parser.error(f"--results {results}: {len(kept)} trials of {trials} kept a checkpoint "
                         "(searched with --keep-checkpoints best?)")
        teacher = teacher_result(parser, args.teacher or results / "teacher" / "best")
        scored = score(results, kept, args.eval_sentences)
        for share in args.budgets:
            chosen = picks(scored, int(share * teacher["parameters"]))
            if chosen is None:
                continue
            ratio = {key: s["test_f1"] / teacher["test_f1"] for key, s in chosen.items()}
            lines.append(f"| {results} | {share:.0%} | {chosen['search']['trial']} "
                         f"({chosen['search']['search_val_f1']:.4f}): {ratio['search']:.3f}x | "
                         f"{chosen['larger']['trial']}: {ratio['larger']:.3f}x | "
                         f"{chosen['best_test']['trial']}: {ratio['best_test']:.3f}x |")
            record.append({"results": str(results), "budget": share, "teacher_test_f1": teacher["test_f1"],
                           **{f"{key}_pick": s for key, s in chosen.items()}})
    publish(args.output, "\n".join(lines) + "\n", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
