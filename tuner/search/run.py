"""A Tune search of one stage, started or resumed under one ``SearchSettings``, and its end as plain data: the
best trial's config, metrics and checkpoint, every trial's best checkpoint, and the trials table."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from tuner.config import METRIC, MODE, OBJECTIVES, RunSettings, TrainSettings, searches_front
from tuner.errors import Interrupted, TunerError, first_line
from tuner.registry import Stage
from tuner.search.asha import RememberingASHA
from tuner.search.method import DEFAULT_METHOD, SearchMethod, startup_trials
from tuner.search.pareto_asha import ParetoASHA
from tuner.search.searcher import EpochOptunaSearch, ShapedSpace, optuna_distributions, spanning_shapes
from tuner.search.study import open_storage
from tuner.search.trainable import _trial
from tuner.spaces import SearchSpace
from tuner.training import OPTIMIZER_FILE

EXPERIMENT = "search"  # results/<stage>/search holds Ray's experiment folder
RUNG_MEMORY = "rungs.json"  # in it: what the early-stopping scheduler recorded at its rungs (RungMemory)


@dataclass(frozen=True)
class SearchSettings:
    """What one search of a stage runs with, beside the stage, its space, its data and the trials'
    ``TrainSettings``: ``tuner.run``'s settings for it (``of``) and what the pipeline planned for the stage."""

    trials: int
    seed: int
    results_dir: Path  # the stage's search goes to <results_dir>/<stage>/search, its study to <results_dir>/optuna.db
    cpus_per_trial: float
    gpus_per_trial: float
    max_failures: int  # Tune restarts a failing trial this many times
    resume: bool  # continue the stage's search where it stopped
    quiet: bool
    # the next trial runs in the finished trial's process, so it does not start Python, import torch and
    # transformers, and load the model code again (trials of a few seconds then all run in the first process)
    reuse_actors: bool = True
    objectives: tuple[str, ...] = ("f1",)  # names in OBJECTIVES
    shapes: list[dict] | None = None  # a front search's size combinations inside the budget (tuner.plan.search_plan)
    method: SearchMethod = DEFAULT_METHOD
    warm_start: dict | None = None  # a partial config to try first (with ``method.warm_start``)

    def __post_init__(self):
        if self.front != (self.shapes is not None):
            raise ValueError(f"objectives {','.join(self.objectives)}: a front search, and only a front search, "
                             f"samples shapes (got {'none' if self.shapes is None else len(self.shapes)})")

    @property
    def front(self) -> bool:
        """A front search (``tuner.config.searches_front``): a multi-objective study over ``shapes``, ParetoASHA,
        and every trial's best checkpoint kept for the front."""
        return searches_front(self.objectives)

    @classmethod
    def of(cls, settings: RunSettings, *, packed, resume: bool, shapes: list[dict] | None,
           warm_start: dict | None) -> SearchSettings:
        """A stage's search under ``tuner.run``'s ``settings``, with what the pipeline decided for the stage: a
        trial's CPUs and GPUs (``packed``, a ``tuner.packing.Packing``), whether it resumes, its shapes and warm
        start."""
        return cls(trials=settings.trials, seed=settings.trial_seed, results_dir=Path(settings.results_dir),
                   cpus_per_trial=packed.cpus_per_trial, gpus_per_trial=packed.gpus_per_trial,
                   max_failures=settings.retries(), resume=resume, quiet=settings.quiet,
                   reuse_actors=not settings.process_per_trial, objectives=settings.objectives, shapes=shapes,
                   warm_start=warm_start)


@dataclass(frozen=True)
class SearchOutcome:
    best_config: dict
    best_metrics: dict
    best_checkpoint: Path
    trials: object  # pandas DataFrame: one row per trial, at its best epoch
    errored: list  # (trial id, config, first line of the error)
    wall_seconds: float
    experiment_dir: Path
    threads: int  # torch threads each trial ran with
    kept: list  # per trial with a checkpoint: {"trial_id", "config", "metrics", "checkpoint"} of its best epoch


def search(stage: Stage, space: SearchSpace, task, inputs, settings: TrainSettings,
           plan: SearchSettings | None = None, **fields) -> SearchOutcome:
    """Run (or resume) the Tune search of one stage as ``plan`` says; returns its best trial's config, metrics and
    checkpoint, and every trial's best checkpoint. A front search's study is multi-objective (Optuna's TPE over
    the objectives' metrics), samples ``plan.shapes``, its start-up trials train ``spanning_shapes`` (with
    ``method.spanning_startup``), and ParetoASHA stops its trials. ``fields``, SearchSettings' fields as
    keywords, replace ``plan``'s, or make it without one (the keywords of callers written before it)."""
    plan = dataclasses.replace(plan, **fields) if plan is not None else SearchSettings(**fields)
    experiment_dir = (Path(plan.results_dir) / stage.name).resolve() / EXPERIMENT
    experiment_dir.parent.mkdir(parents=True, exist_ok=True)
    # a front search re-reports no rung: ParetoASHA may stop a trial whose rung epoch is on the front (see _trial)
    rungs = frozenset() if plan.front else frozenset(plan.method.rungs(settings.epochs))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, stage=stage, task=task, inputs=inputs, settings=settings,
                             use_gpu=plan.gpus_per_trial > 0, rungs=rungs),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})
    if plan.quiet:  # before the searcher: creating its study logs "A new study created"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    if plan.resume:  # errored trials stay errored: --max-failures retries
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = new_tuner(stage, space, inputs, settings.epochs, plan, trainable, experiment_dir)
    with contextlib.redirect_stdout(io.StringIO()) if plan.quiet else contextlib.nullcontext():
        grid = tuner.fit()  # Tune prints its progress tables to stdout whatever its verbosity
    return outcome(grid, stage, plan.trials, time.perf_counter() - started, experiment_dir, settings.threads)


def new_tuner(stage: Stage, space: SearchSpace, inputs, epochs: int, plan: SearchSettings, trainable,
              experiment_dir: Path) -> tune.Tuner:
    """A search started afresh: ``plan``'s searcher and scheduler, and the experiment folder Tune keeps."""
    start_shapes = (spanning_shapes(stage, inputs, plan.shapes, startup_trials(plan.trials, plan.method))
                    if plan.front else None)
    searcher, scheduler, metric, mode = search_algorithms(stage, space, epochs, plan.seed, plan.results_dir,
                                                          plan.objectives, plan.shapes, trials=plan.trials,
                                                          method=plan.method, warm_start=plan.warm_start,
                                                          start_shapes=start_shapes)
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=str(experiment_dir.parent), verbose=0 if plan.quiet else 1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                checkpoint_score_order=MODE),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures))
    return tune.Tuner(trainable, run_config=run_config,
                      tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                                  num_samples=plan.trials, reuse_actors=plan.reuse_actors))


def search_algorithms(stage: Stage, space: SearchSpace, epochs: int, seed: int, results_dir: Path,
                      objectives: tuple[str, ...], shapes: list[dict] | None, trials: int,
                      method: SearchMethod = DEFAULT_METHOD, warm_start: dict | None = None,
                      start_shapes: list[dict] | None = None):
    """(searcher, scheduler, Tune's metric, Tune's mode): Optuna's TPE (or random search) and ASHA on F1, or, in
    a front search, TPE over the objectives' list and ParetoASHA (Tune then has no single metric); FIFO, which
    stops nothing, without early stopping."""
    if method.sampler == "tpe":
        # constant_liar: trials still running count as bad results, so trials packed at once (tuner.packing) are
        # not proposed into the same region (Optuna 5's default, spelled out: Optuna 4's was off)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials, method),
                                             constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    warm_start = warm_start if method.warm_start else None
    memory = (Path(results_dir) / stage.name / EXPERIMENT / RUNG_MEMORY).resolve()
    if not searches_front(objectives):
        searcher = EpochOptunaSearch(optuna_distributions(space), epochs=epochs, pruned_trials=method.pruned_trials,
                                     warm_start=warm_start, metric=METRIC, mode=MODE, sampler=sampler,
                                     study_name=stage.name, storage=open_storage(results_dir))
        # time_attr "epoch", not training_iteration: a rung's epoch can be reported twice (see _trial)
        scheduler = (RememberingASHA(time_attr="epoch", max_t=epochs,
                                     grace_period=method.grace(epochs),
                                     reduction_factor=method.reduction_factor, memory=memory)
                     if method.early_stopping else FIFOScheduler())
        return searcher, scheduler, METRIC, MODE
    metrics, modes = zip(*(OBJECTIVES[name] for name in objectives))
    searcher = EpochOptunaSearch(ShapedSpace(space, shapes), epochs=epochs, pruned_trials=method.pruned_trials,
                                 warm_start=warm_start, start_shapes=start_shapes if method.spanning_startup else None,
                                 metric=list(metrics), mode=list(modes), sampler=sampler,
                                 study_name=stage.name, storage=open_storage(results_dir))
    scheduler = ParetoASHA(list(zip(metrics, modes)), max_t=epochs,
                           rungs=method.front_rungs(epochs), reduction_factor=method.front_reduction_factor,
                           margin=method.front_margin, memory=memory) if method.early_stopping else FIFOScheduler()
    return searcher, scheduler, None, None


def outcome(grid, stage: Stage, trials: int, wall_seconds: float, experiment_dir: Path,
            threads: int) -> SearchOutcome:
    """The ended search as plain data; a search interrupted before its last trial ended, or one whose every
    trial failed, is refused."""
    ended = grid.num_terminated + grid.num_errors
    if ended < trials:  # Ctrl-C: Tune saves the experiment's state and returns as if the search had ended
        raise Interrupted(f"stage {stage.name}: search interrupted with {ended} of {trials} trials ended; nothing "
                          f"is saved as its result: continue it with the same flags and --resume ({experiment_dir})")
    errored = [(trial_id(r), r.config, first_line(r.error)) for r in grid if r.error]
    finished = [r for r in grid if not r.error and r.metrics and METRIC in r.metrics]
    if not finished:
        first = errored[0][2] if errored else "no trial reported a metric"
        raise TunerError(f"stage {stage.name}: every trial failed ({first}); see {experiment_dir}")
    best, checkpoint, best_metrics = best_checkpoint(grid, stage.name, experiment_dir)
    kept = [{"trial_id": trial_id(result), "config": dict(result.config), "metrics": dict(metrics),
             "checkpoint": Path(saved.path)}
            for result in grid for saved, metrics in (result.best_checkpoints or [])[:1]]
    return SearchOutcome(dict(best.config), dict(best_metrics), Path(checkpoint.path), trials_table(grid), errored,
                         wall_seconds, experiment_dir, threads, kept)


def best_checkpoint(grid, stage: str, experiment_dir: Path) -> tuple:
    """(result, checkpoint, its metrics) of the best-scoring checkpoint of any trial that ended without error.
    Not simply the best trial's: a trial interrupted between a rung's first report and the second one that
    carries its checkpoint has a reported score without a checkpoint (see _trial). An errored trial's
    checkpoints count only when no other trial saved one: its config, retrained from the start
    (``tuner.retrain``), would fail again."""
    kept = [(not result.error, metrics[METRIC], index, result, checkpoint, metrics)
            for index, result in enumerate(grid) for checkpoint, metrics in (result.best_checkpoints or [])
            if isinstance(metrics.get(METRIC), (int, float)) and math.isfinite(metrics[METRIC])]
    if not kept:
        raise TunerError(f"stage {stage}: no trial saved a checkpoint; see {experiment_dir}")
    sign = 1 if MODE == "max" else -1
    *_, result, checkpoint, metrics = max(kept, key=lambda item: (item[0], sign * item[1], -item[2]))
    return result, checkpoint, metrics


def prune_checkpoints(experiment: Path, best: Path, keep: str) -> dict:
    """Once a stage's search has ended, nothing continues its trials (``--resume`` restarts only unfinished
    ones, and this runs only after every trial finished): drop AdamW's moments from every checkpoint, and with
    ``keep="best"`` every checkpoint but the search's best. Returns the checkpoints' bytes before and after."""
    def size() -> int:
        return sum(f.stat().st_size for f in experiment.glob("*/checkpoint_*/*") if f.is_file())

    before = size()
    for folder in experiment.glob("*/checkpoint_*"):
        if keep == "best" and folder.resolve() != Path(best).resolve():
            shutil.rmtree(folder)
        else:
            (folder / OPTIMIZER_FILE).unlink(missing_ok=True)
    return {"before": before, "after": size()}


def trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def trials_table(grid) -> pd.DataFrame:
    """One row per trial, errored ones included: its status, config, and metrics at its best epoch (Tune's own
    table), with ``checkpointed`` true where that epoch's checkpoint came in its second report (see _trial)."""
    table = grid.get_dataframe(filter_metric=METRIC, filter_mode=MODE)
    by_trial = {trial_id(result): result for result in grid}
    rows = table.to_dict("records")
    for row in rows:
        history = by_trial[row["trial_id"]].metrics_dataframe
        if history is not None and "checkpointed" in history:
            row["checkpointed"] = bool(history.loc[history["epoch"] == row["epoch"], "checkpointed"].any())
        row.pop("rereport", None)
    reported = {row["trial_id"] for row in rows}
    rows += [dict(trial_id=tid, **{f"config/{k}": v for k, v in result.config.items()})
             for tid, result in by_trial.items() if tid not in reported]  # errored before any report
    for row in rows:
        result = by_trial[row["trial_id"]]
        row["status"] = "ERROR" if result.error else "OK"
        if result.error:
            row["error"] = first_line(result.error)
    table = pd.DataFrame(rows)
    first = ["trial_id", "status"]
    return table[first + [column for column in table.columns if column not in first]]
