"""Search efficiency: how soon tuner's search finds a good config, against random search with and without early
stopping, replayed on recorded learning curves.

    python bench/search_efficiency.py                 # teacher and student tables, 5 seeds: results/search_efficiency.md
    python bench/search_efficiency.py --quick         # smoke mode: synthetic tables, 2 seeds (a temporary folder)
    python bench/search_efficiency.py check --table bench/tables/teacher_cpu.json --search results/teacher/search

Every method runs through ``tuner.search.search`` itself (Ray Tune, ``OptunaSearch``, ASHA or FIFO) with the stage's
training replaced by a look-up in a table that ``bench/curves.py`` recorded: configs spread over the stage's
search space (a Sobol sample), each trained to its last epoch as the ``cpu`` profile trains it. A proposed config
runs as the recorded config nearest to it (Euclidean distance on the unit cube the space defines, log scale for
log ranges), whose validation F1 is reported epoch by epoch, so ASHA stops it where it would have stopped the real
one. Trials run one at a time, as on the ``cpu`` profile, and a clock advances by the table's median seconds for
a trial's setup and for each epoch it trained: a method's time is what it would have trained, not how long the
replay took. ``check`` holds a real search's trials against the table: each trial's F1 per epoch against its
nearest recorded config's, and the real search's best and wall time against the replay of the same method and seed.

Methods: tuner's default (``tuner.search.DEFAULT_METHOD``: TPE + ASHA), random + ASHA, TPE without early stopping,
random without early stopping (``hyperparameter_search``'s default), and tuner's default with each of its three TPE
settings turned off (per-epoch intermediate values with stopped trials PRUNED, start-up trials scaled to the
budget, the warm start from the previous stage), with all three off (tuner before them), and with ASHA's other
usual reduction factor (3 if tuner's is 2: the top third of a rung goes on, rungs at grace x 3^k).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (ROOT, OneLineParser, command_line, output_flags, positive_int, publish,  # noqa: E402
                          record_figures, settle_outputs, utc_minute)
from tuner.figures import headline  # noqa: E402

TABLES = ROOT / "bench" / "tables"
DEFAULT_TABLES = {"teacher": TABLES / "teacher_cpu.json", "student": TABLES / "student_cpu.json"}
DEFAULT_TRIALS = {"teacher": 20, "student": 20}  # trials a search: more than the tables hold configs
WARM_ABLATION = "tuner, no warm start"
WARM_LABELS = (WARM_ABLATION, "tuner, with the warm start")
ETA_WORDS = {2: "half", 3: "third"}
GRACE_SHARE_EARLY = 0.1  # ASHA's first rung at epoch 1 of 10 (the student); the teacher's 3 epochs: epoch 1 either way
GRACE_ABLATION = "tuner, first rung at a tenth of the epochs (student: epoch 1, rungs 1, 2, 4, 8)"
TARGET_POINTS = 0.5  # "within 0.5 points of the best F1 any method found"


def methods():
    """The four methods the issue compares, and tuner's default with each of its three TPE settings flipped (the
    label says which way), plus all three off (tuner before them), and with ASHA's other usual reduction factor."""
    from tuner.search import DEFAULT_METHOD, SearchMethod

    plain = {"tuner (TPE + ASHA)": DEFAULT_METHOD,
             "random + ASHA": SearchMethod(sampler="random", warm_start=False),
             "TPE, no early stopping": dataclasses.replace(DEFAULT_METHOD, early_stopping=False),
             "random, no early stopping": SearchMethod(sampler="random", early_stopping=False, warm_start=False)}
    labels = {"pruned_trials": ("tuner, stopped trials COMPLETE at their rung score", "tuner, stopped trials PRUNED"),
              "scaled_startup": ("tuner, Optuna's 10 start-up trials", "tuner, start-up trials scaled to the budget"),
              "warm_start": (WARM_ABLATION, "tuner, with the warm start")}
    ablations = {labels[name][0 if getattr(DEFAULT_METHOD, name) else 1]:
                 dataclasses.replace(DEFAULT_METHOD, **{name: not getattr(DEFAULT_METHOD, name)}) for name in labels}
    ablations["tuner before the three TPE changes"] = SearchMethod(pruned_trials=False, scaled_startup=False,
                                                                   warm_start=False)
    eta = 3 if DEFAULT_METHOD.reduction_factor == 2 else 2  # ASHA's other usual setting
    ablations[f"tuner, ASHA keeps the top {ETA_WORDS[eta]} (eta {eta})"] = dataclasses.replace(
        DEFAULT_METHOD, reduction_factor=eta)
    ablations[GRACE_ABLATION] = dataclasses.replace(DEFAULT_METHOD, grace_share=GRACE_SHARE_EARLY)
    return plain, ablations


# ---- the table --------------------------------------------------------------------------------------------------

def unit(param: dict, value) -> float:
    """A value's position on its range's unit interval (log scale for loguniform, index for choices)."""
    if param["type"] == "choice":
        values = param["values"]
        return values.index(value) / max(1, len(values) - 1) if value in values else 0.0
    low, high = param["low"], param["high"]
    if param["type"] == "loguniform":
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.0 if high == low else (value - low) / (high - low)


@dataclasses.dataclass
class Replay:
    """What every replayed trial reads: the table's configs on the unit cube and their curves, and the file each
    trained epoch is logged to (trials run one at a time, so a trial's epochs are consecutive lines)."""

    params: list
    points: list
    curves: list  # per config: validation F1 per epoch
    log: str

    def nearest(self, config: dict) -> int:
        here = [unit(p, config[p["name"]]) for p in self.params]
        return min(range(len(self.points)),
                   key=lambda i: sum((a - b) ** 2 for a, b in zip(here, self.points[i])))


def replay_inputs(table: dict, log: Path) -> Replay:
    params = table["params"]
    return Replay(params, [[unit(p, c["config"][p["name"]]) for p in params] for c in table["configs"]],
                  [[e["val_f1"] for e in c["epochs"]] for c in table["configs"]], str(log))


def replay_train(config: dict, task, inputs: Replay, settings, resume=None):
    """The stage's ``train`` in a replay: the nearest recorded config's epochs, reported as the stage would (a
    tiny model stands in for the checkpoints the search writes)."""
    from tuner.models import tiny_config
    from tuner.training import EpochResult, build_optimizer, build_scheduler
    from transformers import AutoModelForTokenClassification

    index = inputs.nearest(config)
    model = AutoModelForTokenClassification.from_config(tiny_config(16, ["O"]))
    optimizer = build_optimizer(model, 1e-3, 0.0)
    scheduler = build_scheduler(optimizer, 0.0, len(inputs.curves[index]))
    for epoch, f1 in enumerate(inputs.curves[index][: settings.epochs]):
        with open(inputs.log, "a") as log:
            log.write(json.dumps({"index": index, "epoch": epoch + 1, "val_f1": f1}) + "\n")
        yield EpochResult(epoch, {"val_f1": f1, "epoch": epoch + 1, "train_loss": 0.0, "train_seconds": 0.0,
                                  "eval_seconds": 0.0}, model, optimizer, scheduler)


def costs(table: dict) -> tuple[float, float, float]:
    """(search setup, one trial's setup, one epoch) in seconds: the table's medians (the stage's ``prepare`` once)."""
    epochs = [e["train_seconds"] + e["eval_seconds"] for c in table["configs"] for e in c["epochs"]]
    return (table.get("prepare_seconds", 0.0), statistics.median(c.get("setup_seconds", 0.0) for c in table["configs"]),
            statistics.median(epochs))


def anytime(lines: list[dict], table: dict) -> dict:
    """The clock of a replayed search: (seconds, best validation F1 so far) after every epoch trained."""
    start, setup, epoch_seconds = costs(table)
    clock, best, curve, started, trial_numbers = start, -math.inf, [], 0, []
    for line in lines:
        started += line["epoch"] == 1
        clock += (setup if line["epoch"] == 1 else 0.0) + epoch_seconds
        best = max(best, line["val_f1"])
        curve.append((clock, best))
        trial_numbers.append(started)
    return {"curve": curve, "seconds": clock, "best": best, "trials": started, "epochs": len(lines),
            "started": trial_numbers}


def table_space(stage_name: str, table: dict):
    from tuner.spaces import Param, SearchSpace

    return SearchSpace(stage_name, Path(table["space"]), tuple(
        Param(p["name"], p["type"], p["low"], p["high"], tuple(p["values"]) if p["values"] else None)
        for p in table["params"]), table["search_space_sha256"])


PENDING = 1  # Tune keeps one trial pending beside the running one: its config is drawn before the running one ends


def replay_search(stage_name: str, table: dict, method, trials: int, seed: int, warm: dict | None) -> dict:
    """One search with tuner's own searcher and scheduler (``tuner.search.search_algorithms``), driven the way
    Tune drives them for trials that run one at a time, in this process: a trial's config is drawn once
    ``PENDING`` trials are queued behind the running one; each of its reports goes to the scheduler, then (unless
    the scheduler stopped it) to the searcher, with ``_trial``'s second report at a rung it improved at; a trial
    that ends goes to both as complete. ``--verify`` checks this loop against Tune's own."""
    from types import SimpleNamespace

    from tuner import registry, search

    stage = registry.by_name(stage_name)
    replay = replay_inputs(table, Path())
    epochs = table["epochs"]
    rungs = method.rungs(epochs)
    lines = []
    with tempfile.TemporaryDirectory(prefix="replay-") as folder:
        searcher, scheduler, metric, mode = search.search_algorithms(
            stage, table_space(stage_name, table), epochs, seed, Path(folder), ("f1",), None, trials=trials,
            method=method, warm_start=warm)
        scheduler.set_search_properties(metric, mode)  # what TuneConfig(metric=..., mode=...) does
        queue = []
        for number in range(trials):
            while len(queue) < 1 + PENDING and number + len(queue) < trials:
                trial = SimpleNamespace(trial_id=f"{number + len(queue):05d}")
                queue.append((trial, searcher.suggest(trial.trial_id)))
                scheduler.on_trial_add(None, trial)
            trial, config = queue.pop(0)
            index = replay.nearest(config)
            best, iteration, result, stopped = -math.inf, 0, None, False
            for epoch, f1 in enumerate(replay.curves[index][:epochs], 1):
                lines.append({"index": index, "epoch": epoch, "val_f1": f1})
                second = f1 > best and epoch in rungs and epoch < epochs
                best = max(best, f1)
                for rereport in (False, True) if second else (False,):
                    iteration += 1
                    result = {"val_f1": f1, "epoch": epoch, "rereport": rereport, "training_iteration": iteration}
                    if scheduler.on_trial_result(None, trial, result) == "STOP":
                        stopped = True
                        break
                    searcher.on_trial_result(trial.trial_id, result)
                if stopped:
                    break
            scheduler.on_trial_complete(None, trial, result)
            searcher.on_trial_complete(trial.trial_id, result)
    return anytime(lines, table) | {"lines": lines}


def ray_search(stage_name: str, table: dict, method, trials: int, seed: int, warm: dict | None) -> dict:
    """The same search through ``tuner.search.search`` and Tune itself (one worker process, trials one at a
    time), the stage's training replaced by ``replay_train``: what ``--verify`` holds the in-process loop to."""
    from tuner import registry, search
    from tuner.config import TrainSettings, usable_cpus

    stage = dataclasses.replace(registry.by_name(stage_name), train=replay_train)
    with tempfile.TemporaryDirectory(prefix="replay-") as folder:
        log = Path(folder) / "epochs.jsonl"
        settings = TrainSettings(epochs=table["epochs"], batch_size=1, eval_batch_size=1, seed=seed, threads=1)
        # every usable CPU for one trial: trials one at a time, as on the cpu profile
        search.search(stage, table_space(stage_name, table), None, replay_inputs(table, log), settings,
                      trials=trials, seed=seed, results_dir=Path(folder), cpus_per_trial=usable_cpus(),
                      gpus_per_trial=0, max_failures=0, resume=False, quiet=True, method=method, warm_start=warm)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    return anytime(lines, table) | {"lines": lines}


def warm_start_of(table: dict) -> dict | None:
    """The previous stage's best config the table recorded (``previous_stage_best``), on the keys it shares."""
    from tuner.spaces import shared_point

    previous = table.get("previous_stage_best")
    return (shared_point(table_space(table["stage"], table), previous) or None) if previous else None


# ---- the report ------------------------------------------------------------------------------------------------

def best_at(curve: list, seconds: float) -> float:
    """Best F1 a search had reached by ``seconds`` (nothing yet: -inf)."""
    reached = [f1 for t, f1 in curve if t <= seconds]
    return reached[-1] if reached else -math.inf


def time_to(curve: list, target: float) -> float:
    return next((t for t, f1 in curve if f1 >= target), math.inf)


def trials_to(run: dict, target: float) -> float:
    """How many trials a search had started when it reached ``target`` (the one that reached it included): what
    its sampler found, apart from the epochs its scheduler saved."""
    return next((n for (_, f1), n in zip(run["curve"], run["started"]) if f1 >= target), math.inf)


def summarise(runs: dict, table: dict) -> dict:
    """Per method: its seeds' times to the target, final bests and wall times; the target; the anytime check."""
    target = max(r["best"] for seeds in runs.values() for r in seeds) - TARGET_POINTS / 100
    rows = {}
    for name, seeds in runs.items():
        times = [time_to(r["curve"], target) for r in seeds]
        rows[name] = {"time_to_target": times, "median_time_to_target": statistics.median(times),
                      "reached": sum(math.isfinite(t) for t in times), "best": [r["best"] for r in seeds],
                      "trials_to_target": [trials_to(r, target) for r in seeds],
                      "seconds": [r["seconds"] for r in seeds], "trials": [r["trials"] for r in seeds],
                      "epochs": [r["epochs"] for r in seeds]}
    return {"target": target, "rows": rows, "table_best": max(max(c) for c in replay_inputs(table, Path()).curves)}


def mean_curve(seeds: list, grid: list) -> list:
    return [statistics.mean(max(best_at(r["curve"], t), 0.0) for r in seeds) for t in grid]


def anytime_gap(runs: dict, ours: str, other: str) -> tuple[float, float]:
    """(budget, the largest amount ``ours``'s mean anytime curve falls below ``other``'s after a quarter of the
    budget); the budget is ``ours``'s median wall time."""
    budget = statistics.median(r["seconds"] for r in runs[ours])
    grid = [budget * (0.25 + 0.75 * i / 200) for i in range(201)]
    gaps = [b - a for a, b in zip(mean_curve(runs[ours], grid), mean_curve(runs[other], grid))]
    return budget, max(gaps)


def plot(runs: dict, ablations: set, stage: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(r["seconds"] for seeds in runs.values() for r in seeds)
    grid = [end * i / 400 for i in range(401)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, seeds in runs.items():
        ax.plot([t / 60 for t in grid], mean_curve(seeds, grid), label=name,
                linestyle="--" if name in ablations else "-", linewidth=1 if name in ablations else 2)
    best = max(r["best"] for seeds in runs.values() for r in seeds)
    ax.set_ylim(max(0.0, best - 0.15), best + 0.01)
    ax.set(xlabel="wall time (minutes, replayed)", ylabel="best validation F1 so far (mean over seeds)",
           title=f"{stage}: anytime curves, {len(next(iter(runs.values())))} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speed_line(ratio: float) -> str:
    if math.isnan(ratio):
        return "tuner's default did not reach the target in most seeds"
    if math.isinf(ratio):
        return "tuner's default reached the target; random search without early stopping did not, in most seeds"
    return f"tuner's default reached the target **{ratio:.2f}x** sooner than random search without early stopping"


def trials_cell(counts: list) -> str:
    median = statistics.median(counts)
    return "not reached" if not math.isfinite(median) else f"{median:g}"


def minutes(seconds: float) -> str:
    return "not reached" if not math.isfinite(seconds) else f"{seconds / 60:.1f}"


def stage_report(stage: str, table: dict, runs: dict, ablations: set, trials: int, seeds: list, png: Path) -> tuple:
    summary = summarise(runs, table)
    rows = summary["rows"]
    ours, random_fifo, random_asha = "tuner (TPE + ASHA)", "random, no early stopping", "random + ASHA"
    theirs, mine = rows[random_fifo]["median_time_to_target"], rows[ours]["median_time_to_target"]
    speedup = math.nan if math.isinf(mine) else theirs / mine
    budget, gap = anytime_gap(runs, ours, random_asha)
    window = [budget * (0.25 + 0.75 * i / 200) for i in range(201)]
    area = {name: statistics.mean(mean_curve(seeds, window)) for name, seeds in runs.items()}
    _, setup, epoch = costs(table)
    lines = [f"### {stage}", "",
             f"Table: {len(table['configs'])} configs of `{Path(table['space']).name}` x {table['epochs']} epochs, "
             f"recorded by `bench/curves.py` on the `{table['profile']}` profile ({table['threads']} threads, "
             f"{table['cpu']}); median {epoch:.0f} s an epoch, {setup:.1f} s a trial's setup. {trials} trials a "
             f"search, seeds {', '.join(map(str, seeds))}. Target: {summary['target']:.4f}, 0.5 points under the "
             f"best any method found (the table's best config scores {summary['table_best']:.4f}).", "",
             "| method | reached the target | median minutes to the target | mean minutes to the target (not "
             "reached: its wall time) | best val F1 over the budget's last 3/4 (mean) | final best val F1 (median) "
             f"| wall minutes (median) | epochs trained of {trials * table['epochs']} (median) "
             "| trials started when it reached the target (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        capped = statistics.mean(t if math.isfinite(t) else s for t, s in zip(row["time_to_target"], row["seconds"]))
        lines.append(f"| {name} | {row['reached']}/{len(seeds)} | {minutes(row['median_time_to_target'])} | "
                     f"{capped / 60:.1f} | {area[name]:.4f} | {statistics.median(row['best']):.4f} "
                     f"| {statistics.median(row['seconds']) / 60:.1f} | {statistics.median(row['epochs']):.0f} "
                     f"| {trials_cell(row['trials_to_target'])} |")
    lines += ["", f"- {speed_line(speedup)} (median over seeds; goal 2x: {'met' if speedup >= 2 else 'missed'}).",
              f"- After the first quarter of its budget ({budget / 60:.1f} min, its median wall time), tuner's mean "
              f"anytime curve was at most **{gap * 100:.2f} points** below random + ASHA's (goal 0.5: "
              f"{'met' if gap <= 0.005 else 'missed'}).", "", f"![{stage} anytime curves]({png.name})", ""]
    plot(runs, ablations, stage, png)
    return lines, {"stage": stage, "speedup_vs_random_fifo": speedup, "anytime_gap_points": gap * 100,
                   "mean_best_over_budget": area,
                   "target": summary["target"], "rows": rows}


# ---- synthetic tables (--quick) ---------------------------------------------------------------------------------

def synthetic_table(stage: str, configs: int, epochs: int) -> dict:
    """A table from a smooth made-up response over the stage's real search space, for the smoke mode."""
    from bench.curves import sobol_configs

    from tuner import registry
    from tuner.config import SEARCH_SPACE_DIR
    from tuner.spaces import load_space

    space = load_space(registry.by_name(stage), SEARCH_SPACE_DIR / f"{stage}.yaml")
    params = [p for p in space.params if p.name not in registry.by_name(stage).sized_by]
    space = dataclasses.replace(space, params=tuple(params))
    records = []
    for index, config in enumerate(sobol_configs(space, configs)):
        u = [unit({"type": p.type, "low": p.low, "high": p.high, "values": p.values}, config[p.name])
             for p in params]
        peak = 0.9 - 0.3 * (u[0] - 0.4) ** 2 - 0.05 * sum((x - 0.5) ** 2 for x in u[1:])
        rate = 0.5 + u[0]
        records.append({"index": index, "config": config, "setup_seconds": 1.0, "epochs": [
            {"val_f1": peak * (1 - math.exp(-rate * (e + 1))), "train_seconds": 10.0, "eval_seconds": 1.0}
            for e in range(epochs)]})
    return {"stage": stage, "profile": "synthetic", "space": str(space.path), "search_space_sha256": space.sha256,
            "params": [{"name": p.name, "type": p.type, "low": p.low, "high": p.high,
                        "values": list(p.values) if p.values else None} for p in params],
            "epochs": epochs, "threads": 1, "cpu": "synthetic", "prepare_seconds": 0.0, "configs": records,
            "previous_stage_best": {"learning_rate": 1e-4, "weight_decay": 0.05, "warmup_ratio": 0.1}
            if stage == "student" else None}


# ---- commands --------------------------------------------------------------------------------------------------

def compare(args) -> int:
    from tuner.errors import TunerError

    plain, ablations = methods()
    if args.quick:
        tables = {stage: synthetic_table(stage, 10, {"teacher": 3, "student": 4}[stage]) for stage in args.stages}
        sources = dict.fromkeys(tables, "a synthetic table (--quick)")
        trials = {stage: 6 for stage in tables}
    else:
        tables, sources = {}, {}
        for stage in args.stages:
            path = args.tables.get(stage, DEFAULT_TABLES[stage])
            if not path.is_file():
                raise TunerError(f"{path}: no table; record one with bench/curves.py --stage {stage}")
            tables[stage] = json.loads(path.read_text())
            sources[stage] = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
        trials = {stage: args.trials or DEFAULT_TRIALS[stage] for stage in tables}
    logging.getLogger("optuna").setLevel(logging.WARNING)  # one "A new study created" line per replay
    started = time.perf_counter()
    report = [f"## Search efficiency ({utc_minute()})", "",
              f"`{args.command}` ({{minutes}} min). How a replay runs: the docstring of `bench/search_efficiency.py`.",
              ""]
    records = []
    for stage, table in tables.items():
        warm = warm_start_of(table)
        chosen = dict(plain, **{name: method for name, method in ablations.items()
                                if warm or name not in WARM_LABELS})  # without a warm start it changes nothing
        runs = {}
        for name, method in chosen.items():
            runs[name] = [replay_search(stage, table, method, trials[stage], seed, warm) for seed in args.seeds]
            print(f"{stage} / {name}: best {[round(r['best'], 4) for r in runs[name]]}, minutes "
                  f"{[round(r['seconds'] / 60, 1) for r in runs[name]]}", flush=True)
        lines, record = stage_report(stage, table, runs, set(ablations), trials[stage], args.seeds,
                                     args.output.parent / f"search_efficiency_{stage}.png")
        if args.verify:
            lines += verify(stage, table, plain, trials[stage], args.seeds[0], warm)
        report += lines
        records.append(record)
    text = "\n".join(report).replace("{minutes}", f"{(time.perf_counter() - started) / 60:.1f}")
    publish(args.output, text + "\n", records)
    record_figures([entry for record in records for entry in stage_headlines(
        record, trials, args, sources[record["stage"]], len(tables[record["stage"]]["configs"]))], args.record)
    return 0


def stage_headlines(record: dict, trials: dict, args, source: str, configs: int) -> list[dict]:
    """The stage's two headline entries, each naming the table its replays ran on (``source``, ``configs``)."""
    stage, n = record["stage"], len(args.seeds)
    speedup = record["speedup_vs_random_fifo"]
    common = {"seeds": n, "inputs": () if args.quick else (source,), "started": args.started,
              "table": f"{source}, {configs} configs"}
    return [
        headline(f"{stage} search: time to within 0.5 points of the best F1, random search without early stopping / "
                 f"tuner (replayed on the {stage} table, median over seeds)",
                 None if not math.isfinite(speedup) else round(speedup, 3), "x", args.command, goal=">= 2x",
                 met=speedup >= 2 if not math.isnan(speedup) else False, peer="random search, no early stopping",
                 peer_settings=f"Optuna's RandomSampler, FIFO (every trial to its last epoch), {trials[stage]} "
                               "trials, the same seeds; hyperparameter_search's default", **common),
        headline(f"{stage} search: how far tuner's mean anytime curve falls below random + ASHA's after a quarter of "
                 "its budget (replayed, mean over seeds)", round(record["anytime_gap_points"], 3), " points",
                 args.command, goal="<= 0.5 points", met=record["anytime_gap_points"] <= 0.5,
                 peer="random search + ASHA", peer_settings=f"Optuna's RandomSampler, tuner's ASHA rungs, "
                                                            f"{trials[stage]} trials, the same seeds", **common)]


def verify(stage: str, table: dict, plain: dict, trials: int, seed: int, warm: dict | None) -> list[str]:
    """Tune's own loop (``ray_search``) against the in-process one, for tuner's default and random + ASHA at one
    seed: the same trials, stopped at the same epochs."""
    from tuner import search
    from tuner.errors import TunerError

    search.start_ray(None, "127.0.0.1", quiet=True)
    lines = []
    try:
        for name in ("tuner (TPE + ASHA)", "random + ASHA"):
            ours = replay_search(stage, table, plain[name], trials, seed, warm)["lines"]
            tune = ray_search(stage, table, plain[name], trials, seed, warm)["lines"]
            if ours != tune:
                raise TunerError(f"--verify: {stage} / {name}, seed {seed}: the in-process replay trained "
                                 f"{len(ours)} epochs, Tune {len(tune)}; first difference at epoch "
                                 f"{next(i for i, (a, b) in enumerate(zip(ours + [None], tune + [None])) if a != b)}")
            lines.append(f"- Verified: {name} at seed {seed} through Tune itself trained the same "
                         f"{len(ours)} epochs of the same configs, in the same order, as the in-process replay.")
    finally:
        search.stop_ray()
    return lines + [""]


def real_trials(search: Path) -> list[dict]:
    """A real search's trials in the order Tune created them (``_trial_<id>_<number>_...``): config, F1 per epoch."""
    trials = []
    for folder in search.iterdir():
        if not (folder / "params.json").is_file():
            continue
        epochs = {}
        for line in (folder / "result.json").read_text().splitlines():
            result = json.loads(line)
            epochs[int(result["epoch"])] = result["val_f1"]
        trials.append({"number": int(folder.name.split("_")[3]), "config": json.loads((folder / "params.json").read_text()),
                       "f1": [epochs[e] for e in sorted(epochs)]})
    return sorted(trials, key=lambda t: t["number"])


def check(args) -> int:
    """A real search against the table: each trial's F1 per epoch against its nearest recorded config's; then the
    replay of the method and seed the real search ran: the recorded configs it proposes, the epochs each trial
    trains and the best F1, against the real search's."""
    from tuner.search import SearchMethod

    logging.getLogger("optuna").setLevel(logging.WARNING)
    table = json.loads(args.table.read_text())
    replay = replay_inputs(table, Path())
    trials = real_trials(args.search)
    if not trials:
        raise_error(f"--search {args.search}: no trial folders (params.json, result.json) there")
    lines, differences = ["| trial | config | nearest recorded config | F1 per epoch (real) | F1 per epoch (table) |",
                          "|---|---|---|---|---|"], []
    for trial in trials:
        index = replay.nearest(trial["config"])
        recorded = replay.curves[index]
        differences += [abs(f1 - recorded[e]) for e, f1 in enumerate(trial["f1"])]
        short = ", ".join(f"{k}={v:.3g}" for k, v in sorted(trial["config"].items()))
        near = ", ".join(f"{k}={v:.3g}" for k, v in sorted(table["configs"][index]["config"].items()))
        lines.append(f"| {trial['number']} | {short} | #{index}: {near} | "
                     f"{', '.join(f'{f1:.4f}' for f1 in trial['f1'])} | "
                     f"{', '.join(f'{f1:.4f}' for f1 in recorded[: len(trial['f1'])])} |")
    lines.append(f"\nMean absolute difference over {len(differences)} epochs: "
                 f"{100 * statistics.mean(differences):.2f} points (largest {100 * max(differences):.2f}).")
    method = SearchMethod() if args.method == "default" else SearchMethod(pruned_trials=False, scaled_startup=False,
                                                                          warm_start=False)
    replayed = replay_search(table["stage"], table, method, len(trials), args.seed, None)["lines"]
    proposed = [line["index"] for line in replayed if line["epoch"] == 1]
    trained = [sum(1 for _ in group) for group in split_trials(replayed)]
    lines += ["", f"Replay of the {args.method} method at seed {args.seed}, {len(trials)} trials:",
              f"- recorded configs it proposed: {proposed}; the real search's configs map to "
              f"{[replay.nearest(t['config']) for t in trials]}",
              f"- epochs each trial trained: replay {trained}, real {[len(t['f1']) for t in trials]}",
              f"- best validation F1: replay {max(line['val_f1'] for line in replayed):.4f}, real "
              f"{max(max(t['f1']) for t in trials):.4f}"]
    print("\n".join(lines))
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


def split_trials(lines: list[dict]) -> list[list[dict]]:
    """A replay's epoch lines, one list per trial (a trial's first epoch starts it)."""
    trials = []
    for line in lines:
        if line["epoch"] == 1:
            trials.append([])
        trials[-1].append(line)
    return trials


def raise_error(message: str):
    from tuner.errors import TunerError

    raise TunerError(message)


def main(argv=None) -> int:
    from tuner.cli import entry_point

    parser = OneLineParser(prog="python bench/search_efficiency.py", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    parser.add_argument("--quick", action="store_true", help="smoke mode: synthetic tables, 6 trials, 2 seeds")
    parser.add_argument("--stages", nargs="+", choices=sorted(DEFAULT_TABLES), default=sorted(DEFAULT_TABLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="searcher seeds (default 0 1 2 3 4)")
    parser.add_argument("--trials", type=positive_int, help="trials a search (default 20)")
    output_flags(parser, "search_efficiency.md")
    parser.add_argument("--verify", action="store_true",
                        help="also run tuner's default and random + ASHA through Tune itself, at the first seed, "
                             "and check they train what the in-process replay trains")
    parser.add_argument("--table", dest="table_files", action="append", default=[], metavar="STAGE=FILE",
                        help="a table other than bench/tables/<stage>_cpu.json")
    real = sub.add_parser("check", help="a real search's trials against the table")
    real.add_argument("--table", type=Path, required=True)
    real.add_argument("--search", type=Path, required=True, help="a stage's Ray experiment folder (results/<stage>/search)")
    real.add_argument("--output", type=Path)
    real.add_argument("--method", choices=["default", "before"], default="default",
                      help="the method the real search ran: tuner's default, or tuner before the three TPE changes")
    real.add_argument("--seed", type=int, default=0, help="the real search's --seed")
    args = parser.parse_args(argv)
    if args.command == "check":
        for flag, path in (("--table", args.table), ("--search", args.search)):
            if not path.exists():
                parser.error(f"{flag} {path}: not found")
        return entry_point(lambda _: check(args))()
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.command = command_line("search_efficiency.py", args.argv)  # every flag: --stages and --table change it
    settle_outputs(parser, args, "search_efficiency.md", args.command)
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    args.tables = {}
    for item in args.table_files:
        stage, _, file = item.partition("=")
        if stage not in DEFAULT_TABLES or not file:
            parser.error(f"--table {item}: expected STAGE=FILE with STAGE one of {', '.join(DEFAULT_TABLES)}")
        args.tables[stage] = Path(file)
    return entry_point(lambda _: compare(args))()


if __name__ == "__main__":
    sys.exit(main())
