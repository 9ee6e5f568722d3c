"""Record a table of learning curves: configs spread over a stage's search space, each trained to the end.

    python bench/curves.py --stage teacher --configs 32 --out bench/tables/teacher_cpu.json
    python bench/curves.py --stage student --configs 16 --teacher results/teacher/best --results-dir results \
        --out bench/tables/student_cpu.json

Every config is trained as one trial of ``python -m tuner.run --profile cpu`` trains it (the same sentences,
seed, epochs, batches and precision, the stage's own ``train`` on the driver's ``prepare``), in this one process,
one after another, and its validation F1 and seconds are written after every epoch. The configs are the first
``--configs`` points of a scrambled Sobol sequence over the space the search samples (log scale for log ranges).
The table also keeps ``previous_stage_best``: the config ``tuner.run`` would warm-start this stage's search from
(the best of the earlier stage saved under ``--results-dir``; for the student, the factorized model's), which the
replay's warm-start row tries first. ``bench/search_efficiency.py`` replays searches against the table. A run that
stops keeps the configs already recorded, and the same command continues from there.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, require_conll, write_result  # noqa: E402

import torch  # noqa: E402

from tuner import registry  # noqa: E402
from tuner.cli import OneLineParser, positive_int  # noqa: E402
from tuner.config import RunSettings, default_threads, resolve_profile, train_settings  # noqa: E402
from tuner.pipeline import warm_start  # noqa: E402
from tuner.plan import search_plan  # noqa: E402
from tuner.spaces import load_space  # noqa: E402
from tuner.task import check_teacher, load_task, stage_inputs  # noqa: E402
from tuner.timing import cpu_name  # noqa: E402
from tuner.memory import release_memory  # noqa: E402

SOBOL_SEED = 0


def unit_to_config(space, point) -> dict:
    """A point of the unit cube as a config of ``space`` (log scale for loguniform, rounded for int)."""
    config = {}
    for p, u in zip(space.params, point):
        u = float(u)
        if p.type == "loguniform":
            config[p.name] = math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
        elif p.type == "uniform":
            config[p.name] = p.low + u * (p.high - p.low)
        elif p.type == "int":
            config[p.name] = int(min(p.high, math.floor(p.low + u * (p.high - p.low + 1))))
        else:
            config[p.name] = p.values[min(len(p.values) - 1, int(u * len(p.values)))]
    return config


def sobol_configs(space, count: int) -> list[dict]:
    engine = torch.quasirandom.SobolEngine(len(space.params), scramble=True, seed=SOBOL_SEED)
    return [unit_to_config(space, point) for point in engine.draw(count)]


def main(argv=None) -> int:
    parser = OneLineParser(prog="python bench/curves.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--stage", choices=registry.names(), required=True)
    parser.add_argument("--configs", type=positive_int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, help="the teacher later stages read (its best folder)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="where the earlier stages' best models are (the warm start the table records)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_conll(parser, args.data)
    stage = registry.by_name(args.stage)
    if stage.needs_teacher and not args.teacher:
        parser.error(f"--stage {stage.name} distils or compresses a teacher: pass --teacher")
    profile = resolve_profile(args.profile, torch.cuda.is_available())
    settings = RunSettings(stages=(stage,), trials=args.configs, profile=profile, data=str(args.data),
                           seed=args.seed, teacher=args.teacher if stage.needs_teacher else None,
                           results_dir=args.results_dir)
    space = load_space(stage, settings.space_file(stage.name))
    teacher = check_teacher(settings, stage) if stage.needs_teacher else None
    task, tokenizer = load_task(settings, teacher)
    threads = default_threads(0)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    inputs = stage_inputs(stage, settings, task, teacher, len(tokenizer))
    prepare_seconds = time.perf_counter() - started
    sampled, _ = search_plan(stage, space, inputs, ("f1",))
    trial = train_settings(profile, stage.epochs(profile), args.seed, threads)
    table = {"stage": stage.name, "profile": profile.name, "seed": args.seed, "space": str(space.path),
             "search_space_sha256": space.sha256,
             "params": [{"name": p.name, "type": p.type, "low": p.low, "high": p.high,
                         "values": list(p.values) if p.values else None} for p in sampled.params],
             "epochs": trial.epochs, "threads": threads, "cpu": cpu_name() or platform.machine(),
             "prepare_seconds": prepare_seconds, "train_sentences": len(task.train),
             "validation_sentences": len(task.validation), "configs": []}
    previous = warm_start(stage, settings, sampled)
    if previous:
        table["previous_stage_best"] = previous
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        if earlier.get("search_space_sha256") == space.sha256 and earlier.get("seed") == args.seed:
            table["configs"] = [c for c in earlier["configs"] if len(c["epochs"]) == trial.epochs]
    for index, config in enumerate(sobol_configs(sampled, args.configs)):
        if index < len(table["configs"]):
            continue
        entered = time.perf_counter()
        release_memory()
        record = {"index": index, "config": config, "epochs": []}
        for result in stage.train(dict(config), task, inputs, trial, None):
            metrics = result.metrics
            if not record["epochs"]:
                record["setup_seconds"] = (time.perf_counter() - entered - metrics["train_seconds"]
                                           - metrics["eval_seconds"])
            record["epochs"].append({"val_f1": metrics["val_f1"], "train_loss": metrics["train_loss"],
                                     "train_seconds": metrics["train_seconds"],
                                     "eval_seconds": metrics["eval_seconds"]})
        record["wall_seconds"] = time.perf_counter() - entered
        table["configs"].append(record)
        write_result(args.out, table)
        print(f"{stage.name} config {index + 1}/{args.configs}: best val F1 "
              f"{max(e['val_f1'] for e in record['epochs']):.4f} in {record['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
