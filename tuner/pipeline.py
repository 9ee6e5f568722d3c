"""The pipeline: validate every input, build the shared data once, then search each stage and save its best.

Nothing is written under the results folder until every input has been read and checked.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch
import yaml

from tuner import export, packing, registry
from tuner.config import METRIC, RunSettings, plain, searches_front, train_settings, usable_cpus
from tuner.data import TaskData
from tuner.errors import TunerError
from tuner.deploy import DEPLOY
from tuner.front import FRONT_CSV, FRONT_DIR, front_hypervolume, save_front
from tuner.models import base_config, count_parameters, load_model, save_model, shape_model
from tuner.plan import check_shapes, search_plan, single_objective_space, sized_params
from tuner.registry import Stage
from tuner.spaces import SearchSpace, edges, load_space, shared_point, value_ranges
from tuner.resume import check_resumable, search_settings
from tuner.task import BEST, RESULT_FILE, SEARCH_SETTINGS, check_teacher, load_task, stage_inputs, teacher_folder
from tuner.training import evaluate, select_device

log = logging.getLogger(__name__)

VERSIONED = ("tuner", "torch", "transformers", "datasets", "seqeval", "ray", "optuna")


def check_inputs(settings: RunSettings):
    """Everything that can be refused before any work: search spaces, prior stages, existing searches. Returns
    the search spaces by stage name and the loaded teacher (None when this run trains it or no stage reads one)."""
    if settings.optuna_dashboard and importlib.util.find_spec("optuna_dashboard") is None:
        raise TunerError("--optuna-dashboard: optuna-dashboard is not installed (pip install 'tuner[live]' or "
                         "pip install optuna-dashboard)")
    spaces = {stage.name: load_space(stage, settings.space_file(stage.name)) for stage in settings.stages}
    trains_teacher = any(stage.trains_teacher for stage in settings.stages)
    if trains_teacher and settings.teacher:
        raise TunerError("--teacher names the teacher a later stage reads; with --stage "
                         f"{' or '.join(s.name for s in settings.stages if s.trains_teacher)} or all the teacher "
                         "is the one this run trains")
    readers = [stage for stage in settings.stages if stage.needs_teacher]
    teacher = check_teacher(settings, readers[0]) if readers and not trains_teacher else None
    config = teacher.config if teacher is not None else None  # the teacher's shape bounds the stages' shapes
    if trains_teacher and any(stage.sized_by for stage in settings.stages):
        config = base_config(settings.profile.model)
    # a teacher this run trains: checked at its shape with one label, the fewest parameters it can have
    shaped = teacher if teacher is not None or config is None else shape_model(config)
    for stage in settings.stages:
        stage.check(settings.profile, shaped)
        if searches_front(settings.objectives):
            sized_params(stage, spaces[stage.name], settings.objectives)
        if config is not None:
            check_shapes(stage, spaces[stage.name], settings.objectives, config)
        if teacher is not None and stage.sizing and searches_front(settings.objectives):  # a budget none fits
            search_plan(stage, spaces[stage.name], stage.sizing(teacher, settings.profile), settings.objectives)
    if settings.address is None:  # a local Ray gets this machine's CPUs and GPUs
        packing.check_resources(settings, usable_cpus(), torch.cuda.device_count())
    experiments = {stage.name: settings.stage_dir(stage.name) / "search" for stage in settings.stages}
    if settings.resume and not any(e.is_dir() for e in experiments.values()):
        raise TunerError(f"--resume: no search to resume at {next(iter(experiments.values()))}")
    for stage in settings.stages:
        experiment = experiments[stage.name]
        if experiment.exists() and not (settings.resume or settings.overwrite):
            raise TunerError(f"{experiment} holds an earlier search of stage {stage.name}: "
                             "pass --resume to continue it or --overwrite to start again")
        if experiment.is_dir() and settings.resume:
            check_resumable(stage, settings, spaces[stage.name])
    export.check_exports(Path(settings.results_dir), searched=tuple(stage.name for stage in settings.stages))
    return spaces, teacher


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def resolved_config(settings: RunSettings) -> dict:
    """The run's settings and profile as YAML-ready values (stages by name)."""
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    fields["stages"] = [stage.name for stage in settings.stages]
    return {"settings": plain(fields, drop="profile"), "profile": plain(asdict(settings.profile))}


def training_record(profile, threads: int) -> dict:
    """The non-searched settings a retrain needs to reproduce a trial (``python -m tuner.retrain``)."""
    return dict(plain(asdict(profile), drop="space_dir"), threads=threads)


def save_best(stage: Stage, settings: RunSettings, outcome, task: TaskData, tokenizer, space: SearchSpace,
              front: list | None = None, checkpoint_bytes: dict | None = None) -> dict:
    """Write ``results/<stage>/best`` (model, tokenizer, resolved config, search space, metrics) and the trials
    table; returns the stage's result record."""
    model = load_model(outcome.best_checkpoint)
    device = select_device()
    test = evaluate(model.to(device), task.test, task.labels, settings.profile.eval_batch_size, task.pad_token_id,
                    device, settings.profile.precision)
    stage_dir = settings.stage_dir(stage.name)
    best = stage_dir / BEST
    staging = stage_dir / (BEST + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model.cpu(), staging, tokenizer)
    shutil.copyfile(space.path, staging / "search_space.yaml")
    (staging / "run_config.yaml").write_text(yaml.safe_dump(resolved_config(settings), sort_keys=False))
    record = {
        "stage": stage.name,
        "hyperparameters": outcome.best_config,
        "val_f1": outcome.best_metrics[METRIC],
        "test_f1": test["f1"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "epoch": outcome.best_metrics.get("epoch"),
        "parameters": count_parameters(model),
        "num_layers": model.config.num_hidden_layers,
        "factor_dim": getattr(model.config, "factor_dim", None),
        "checkpoint": str(best),
        "search_space": str(space.path),
        "search_space_sha256": space.sha256,
        "seed": settings.seed,
        "search_seed": settings.trial_seed,
        "data": task.source,
        "split": settings.split,
        "profile": settings.profile.name,
        "training": training_record(settings.profile, outcome.threads),
        "trials": len(outcome.trials),
        "errored_trials": [{"trial": t, "config": c, "error": e} for t, c, e in outcome.errored],
        "search_wall_seconds": outcome.wall_seconds,
        "versions": versions(),
    }
    record["description"] = stage.description.format(**record)
    record["range_edges"] = edges(space, outcome.best_config, skip=stage.sized_by)  # sizes: bounded by the budget
    record["checkpoint_bytes"] = checkpoint_bytes
    if front is not None:
        record["objectives"] = list(settings.objectives)
        record["pareto"] = front
        record["hypervolume"] = front_hypervolume(front)
    (staging / RESULT_FILE).write_text(json.dumps(record, indent=2, default=str))
    shutil.rmtree(best, ignore_errors=True)
    staging.rename(best)
    outcome.trials.to_csv(stage_dir / "trials.csv", index=False)
    return record


def configure_output(quiet: bool) -> None:
    """Logging for a run: INFO, or under ``--quiet`` warnings only, transformers' model-loading reports and
    progress bars included (the search module quiets Ray and Optuna the same way)."""
    import transformers

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def run(settings: RunSettings, echo=print) -> dict:
    """Run the requested stages in order; returns stage name -> result record."""
    from tuner import search  # Ray starts only once the inputs are known to be good
    from tuner.search.live import LiveDashboard

    spaces, teacher_model = check_inputs(settings)  # the teacher is loaded once; no stage changes it
    search.check_storage(Path(settings.results_dir))  # a damaged study database, before --overwrite drops anything
    task, tokenizer = load_task(settings, teacher_model)
    echo(f"data: {task.source} ({settings.split} split): {len(task.train)} train, {len(task.validation)} "
         f"validation, {len(task.test)} test sentences; labels {' '.join(task.labels)}")
    cluster = search.start_ray(settings.address, settings.dashboard_host, settings.quiet)
    echo(f"Ray dashboard: {cluster.dashboard_url or 'off (ray[default] is not installed)'}"
         + (f" (log in with the token in {cluster.token_file})" if cluster.token_file else ""))
    live = None
    try:
        packing.check_resources(settings, cluster.cpus_per_node, cluster.gpus_per_node)  # what a joined cluster has
        if settings.optuna_dashboard:
            live = LiveDashboard(Path(settings.results_dir), settings.dashboard_host)
            echo(f"Optuna dashboard: {live.url}")
    except TunerError:
        search.stop_ray()
        raise
    except OSError as exc:  # the dashboard's port
        search.stop_ray()
        raise TunerError(f"--optuna-dashboard: cannot listen on {settings.dashboard_host} ({exc.strerror})") from None
    torch.set_num_threads(usable_cpus())
    records = {}
    try:
        for stage in settings.stages:
            records[stage.name] = run_stage(stage, settings, spaces[stage.name], task, tokenizer, teacher_model,
                                            cluster, echo)
            if stage.trains_teacher:  # the stages after it read the teacher this run just saved
                teacher_model = load_model(teacher_folder(settings))
    finally:
        if not settings.keep_dashboard:
            search.stop_ray()
            if live:
                live.stop()
    return records


def run_stage(stage: Stage, settings: RunSettings, space: SearchSpace, task: TaskData, tokenizer, teacher_model,
              cluster, echo) -> dict:
    """Search one stage (or resume its search), save its best model and refresh the exports."""
    from tuner import search

    started = time.perf_counter()
    searched = space if searches_front(settings.objectives) else single_objective_space(stage, space)
    inputs = stage_inputs(stage, settings, task, teacher_model, len(tokenizer), value_ranges(searched))
    stage_dir = settings.stage_dir(stage.name)
    sampled, shapes = search_plan(stage, space, inputs, settings.objectives)  # refuses a budget before any change
    if settings.overwrite:
        shutil.rmtree(stage_dir / "search", ignore_errors=True)
    resume = settings.resume and (stage_dir / "search").is_dir()  # else: start it
    profile_settings = train_settings(settings.profile, stage.epochs(settings.profile), settings.trial_seed, 1)
    packed = packing.for_stage(stage, settings, sampled, inputs, shapes, task, profile_settings, cluster, resume)
    if not resume:
        search.reset_study(Path(settings.results_dir), stage.name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / SEARCH_SETTINGS).write_text(
            yaml.safe_dump(search_settings(stage, settings, space, packed), sort_keys=False))
    echo(f"stage {stage.name}: {settings.trials} trials over {space.path}; {packed.line()}")
    if searches_front(settings.objectives) and not settings.optuna_dashboard:  # Ray's shows actors, not the front
        database = (Path(settings.results_dir) / search.DATABASE).resolve()
        echo(f"stage {stage.name}: watch the front grow with `optuna-dashboard sqlite:///{database}` "
             "(pip install optuna-dashboard; it serves on 127.0.0.1:8080)")
    trial_settings = dataclasses.replace(profile_settings, threads=packed.threads)
    start = warm_start(stage, settings, sampled) if search.DEFAULT_METHOD.warm_start else {}
    if start and not resume:
        echo(f"stage {stage.name}: first trial warm-started from the previous stage's best config "
             f"({', '.join(f'{k}={v:.4g}' for k, v in start.items())})")
    plan = search.SearchSettings.of(settings, packed=packed, resume=resume, shapes=shapes, warm_start=start)
    outcome = search.search(stage, sampled, task, inputs, trial_settings, plan)
    clear_stale_outputs(stage_dir, front_search=plan.front)
    front = save_front(stage_dir, outcome.kept, task, tokenizer, settings.profile.eval_batch_size,
                       settings.profile.precision, count_parameters(teacher_model), echo) if plan.front else None
    pruned = search.prune_checkpoints(outcome.experiment_dir, outcome.best_checkpoint, settings.keep_checkpoints)
    record = save_best(stage, settings, outcome, task, tokenizer, space, front, pruned)
    later = tuple(s.name for s in settings.stages[settings.stages.index(stage) + 1:])  # to be searched again
    export.write_exports(Path(settings.results_dir), skip=later)
    # said as each stage ends, so a long run shows its results as they come (the command repeats them at its end)
    echo(f"stage {stage.name}: done in {(time.perf_counter() - started) / 60:.1f} minutes; "
         f"{summary_line(record).splitlines()[0]}")
    return record


def clear_stale_outputs(stage_dir: Path, front_search: bool) -> None:
    """Once a search has ended, drop what an earlier search of the stage left that would now describe another
    model: its deployed model (``tuner.deploy`` writes it again for the new best) and, after a search of F1
    alone, an earlier front search's members and table (a front search replaces them itself)."""
    shutil.rmtree(stage_dir / DEPLOY, ignore_errors=True)
    if not front_search:
        shutil.rmtree(stage_dir / FRONT_DIR, ignore_errors=True)
        (stage_dir / FRONT_CSV).unlink(missing_ok=True)


def warm_start(stage: Stage, settings: RunSettings, space: SearchSpace) -> dict:
    """The best config of the stage before ``stage`` (the nearest earlier one with a saved best model here; for
    a stage reading ``--teacher``, that teacher's), restricted to the keys ``space`` shares with it and holds in
    range: the search's first trial (``search.SearchMethod.warm_start``). Empty when there is none."""
    earlier = [s for s in registry.stages() if s.order < stage.order]
    folders = [teacher_folder(settings) if s.trains_teacher else settings.stage_dir(s.name) / BEST
               for s in reversed(earlier)]
    for folder in folders:
        record_file = folder / RESULT_FILE
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError):
                return {}  # a warm start is an optimisation: an unreadable record only loses it
            config = record.get("hyperparameters") if isinstance(record, dict) else None
            return shared_point(space, config) if isinstance(config, dict) else {}
    return {}


def keep_dashboard(echo) -> None:
    from tuner import search

    search.wait_for_interrupt(echo)


def summary_line(record: dict) -> str:
    hparams = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record["hyperparameters"].items())
    line = (f"best {record['stage']}: validation F1 {record['val_f1']:.4f}, test F1 {record['test_f1']:.4f}, "
            f"{record['parameters']:,} parameters; config {hparams}; saved to {record['checkpoint']}")
    for errored in record["errored_trials"]:
        line += f"\n  errored trial {errored['trial']} {errored['config']}: {errored['error']}"
    if record.get("checkpoint_bytes"):
        line += (f"\n  trial checkpoints: {record['checkpoint_bytes']['after'] / 1e6:.0f} MB kept "
                 f"({record['checkpoint_bytes']['before'] / 1e6:.0f} MB before dropping what nothing will read)")
    for edge in record.get("range_edges", []):
        line += f"\n  note: {edge}"
    return line
