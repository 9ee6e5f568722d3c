"""Command line: search the hyperparameters of one stage (or all) of the NER compression pipeline.

    python -m tuner.run --stage teacher --trials 4 --data ../shared/data/conll2003
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuner import figures, registry
from tuner.cli import OneLineParser, add_profile_flags, entry_point, overrides_from, positive_int, seed_int
from tuner.config import KEEP_CHECKPOINTS, OBJECTIVES, PROFILES, SPLITS, RunSettings, resolve_profile

ALL = "all"  # --stage all: every registered stage, in order


def objective_list(text: str) -> tuple[str, ...]:
    """``f1,params`` -> ("f1", "params"); RunSettings checks the names."""
    return tuple(name.strip() for name in text.split(","))


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tuner.run", description=__doc__.strip().splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=registry.names() + (ALL,),
                   help=f"stage to search; {ALL} runs {', '.join(registry.names())} in order")
    p.add_argument("--trials", type=positive_int, default=4, help="number of trials (Optuna TPE samples)")
    p.add_argument("--profile", choices=PROFILES, default="auto",
                   help="auto: gpu with CUDA, else cpu; gpu: bert-base-cased, all data; cpu: packaged MiniLM, "
                        "a subset; smoke: tiny random BERT, seconds")
    p.add_argument("--data", default="conll2003",
                   help="conll2003 (the Hugging Face Hub) or a folder of CoNLL files (train.txt, validation.txt, test.txt)")
    p.add_argument("--teacher", type=Path, help="teacher folder for the stages that read one (default: RESULTS/teacher/best)")
    p.add_argument("--split", choices=SPLITS, default="report",
                   help="report: 80/10/10 of train, seeded; official: the corpus's validation and test files")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds the split, and unless --search-seed is given the sampler, the heads and the data order")
    p.add_argument("--search-seed", type=seed_int, default=None,
                   help="seeds the sampler, the heads and the data order only (default: --seed): another draw of the "
                        "same search, against the same teacher and split")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--cpus-per-trial", type=float, default=0.0,
                   help="CPUs per trial; 0: with --gpus-per-trial above 0 the same share of a node's CPUs, else "
                        "chosen per stage from a measured training step (a node per trial with one trial, one core, "
                        "--address or a failed timing); --resume keeps what the search started with")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions allowed (default: chosen per stage from the trial's GPU memory "
                        "with CUDA; 1 with --cpus-per-trial; 0 measures the CPUs' packing)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or 127.0.0.1:6379)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="interface the Ray dashboard listens on")
    p.add_argument("--optuna-dashboard", action="store_true",
                   help="serve optuna-dashboard (the study's trials and front, live) on --dashboard-host for the "
                        "search, and after it with --keep-dashboard (needs the [live] extra)")
    p.add_argument("--keep-dashboard", action="store_true", help="keep Ray and its dashboard up after the search (Ctrl-C ends)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the stage")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier search of the stage and start again")
    p.add_argument("--max-failures", type=int, help="restarts of a failing trial from its last checkpoint "
                   "(default: 3 with --address, where a node can die under its trials; 0 on this machine alone)")
    p.add_argument("--process-per-trial", action="store_true",
                   help="start every trial in a fresh worker process instead of reusing a finished trial's "
                        "(isolates trials; costs the process start and model-code import per trial)")
    p.add_argument("--objectives", type=objective_list, default=("f1",),
                   help=f"comma-separated, from {', '.join(OBJECTIVES)}: f1 (the best F1), or f1,params (the "
                        "F1-vs-size Pareto front, in one search)")
    p.add_argument("--keep-checkpoints", choices=KEEP_CHECKPOINTS, default="all",
                   help="once a stage's search has ended: all (every trial's best model, without AdamW's moments) "
                        "or best (the search's best checkpoint only)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.add_argument("--record", type=Path, metavar="FILE",
                   help="add this run's figures (each stage's best F1 and size, each front member, replacing an earlier "
                        "front's of the same settings, the search's "
                        "minutes) to FILE, such as results/benchmarks.json, with the command, commit, date and machine")
    add_profile_flags(p)
    return p


def settings_from(args: argparse.Namespace, cuda_available: bool) -> RunSettings:
    profile = resolve_profile(args.profile, cuda_available, **overrides_from(args))
    stages = registry.stages() if args.stage == ALL else (registry.by_name(args.stage),)
    return RunSettings(stages=stages, trials=args.trials, profile=profile, data=args.data, split=args.split,
                       seed=args.seed, search_seed=args.search_seed, results_dir=args.results_dir,
                       cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, address=args.address, teacher=args.teacher, resume=args.resume,
                       overwrite=args.overwrite, quiet=args.quiet, dashboard_host=args.dashboard_host,
                       keep_dashboard=args.keep_dashboard, optuna_dashboard=args.optuna_dashboard,
                       max_failures=args.max_failures,
                       process_per_trial=args.process_per_trial, objectives=args.objectives,
                       keep_checkpoints=args.keep_checkpoints)


def run_figures(record: dict, command: str, started: dict | None = None) -> list[dict]:
    """A searched stage's figures: its best model's test F1 (validation F1, parameters and the search's minutes in
    the details), or with ``--objectives f1,params`` one per front member and the front's hypervolume."""
    search_seed = record.get("search_seed", record["seed"])
    where = f"{record['profile']} profile, {record['trials']} trials, {record['split']} split"
    if search_seed != record["seed"]:  # another draw of the same search: figures of their own, beside the first's
        where += f", search seed {search_seed}"
    details = {"search_minutes": round(record["search_wall_seconds"] / 60, 1), "seed": record["seed"],
               "search_seed": search_seed}
    if "pareto" not in record:
        return [figures.headline(f"{record['stage']}: test F1 of the best trial ({where})", round(record["test_f1"], 4),
                                 "F1", command, seeds=1, inputs=(record["data"],), started=started,
                                 val_f1=round(record["val_f1"], 4), parameters=record["parameters"], **details)]
    members = [figures.headline(figures.front_member(record["stage"], member["name"].rsplit("-", 1)[0], where),
                                round(member["test_f1"], 4), "F1", command, seeds=1,
                                inputs=(record["data"],), started=started, val_f1=round(member["val_f1"], 4),
                                parameters=member["parameters"], batch_1_median_ms=member.get("batch_1_median_ms"),
                                **details) for member in record["pareto"]]
    volume = record.get("hypervolume")
    if not volume:
        return members
    return members + [figures.headline(
        f"{record['stage']} front hypervolume in (parameter share of the teacher, test F1) ({where})",
        volume["test"], " (share x F1)", command, seeds=1, inputs=(record["data"],), started=started, val=volume["val"],
        reference=volume["reference"], members=len(record["pareto"]), **details)]


@entry_point
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import torch

    from tuner import pipeline

    settings = settings_from(args, torch.cuda.is_available())
    command = figures.command_line("-m tuner.run", sys.argv[1:] if argv is None else argv)
    started = figures.provenance()
    if args.record:
        figures.check_writable(args.record, command)  # before the search: a refused file costs no search
    pipeline.configure_output(settings.quiet)
    records = pipeline.run(settings, echo=(lambda *a: None) if args.quiet else print)
    for record in records.values():
        print(pipeline.summary_line(record))
    print(f"best configs: {settings.results_dir / 'best_configs.yaml'}; table: {settings.results_dir / 'summary.md'}")
    if args.record:
        figures.record([entry for record in records.values() for entry in run_figures(record, command, started)],
                       args.record)
        print(f"figures: {args.record}")
    if settings.keep_dashboard:
        pipeline.keep_dashboard(print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
