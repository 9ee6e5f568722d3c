"""The only module that imports Ray and Optuna: a Tune search with Optuna's TPE and ASHA over one stage.

Stage code stays plain PyTorch; this module turns its per-epoch results into ``tune.report`` calls with
checkpoints, and the finished search into plain data (best config, metrics, checkpoint path, trials table).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from tuner.config import METRIC, MODE, TrainSettings  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.spaces import SearchSpace  # noqa: E402
from tuner.stages import factorized, student, teacher  # noqa: E402
from tuner.training import save_checkpoint, select_device  # noqa: E402

log = logging.getLogger(__name__)

STAGE_TRAIN = {"teacher": teacher.train, "factorized": factorized.train, "student": student.train}
EXPERIMENT = "search"  # results/<stage>/search holds Ray's experiment folder
AUTH_TOKEN = Path.home() / ".ray" / "auth_token"


def optuna_distributions(space: SearchSpace) -> dict:
    """One short mapping from the YAML records to Optuna domains."""
    domains = {}
    for p in space.params:
        if p.type == "choice":
            domains[p.name] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.type == "int":
            domains[p.name] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            domains[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform")
    return domains


@dataclass(frozen=True)
class ClusterInfo:
    dashboard_url: str
    cpus_per_node: int
    token_file: Path | None


def start_ray(address: str | None, dashboard_host: str, quiet: bool) -> ClusterInfo:
    """Start a local Ray (every port on ``dashboard_host``'s side bound to loopback) or join ``address``."""
    if ray.is_initialized():
        ray.shutdown()
    kwargs = dict(include_dashboard=True, dashboard_host=dashboard_host, log_to_driver=not quiet,
                  logging_level=logging.WARNING, configure_logging=True)
    if address:
        context = ray.init(address=address, **kwargs)
    else:
        context = ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", **kwargs)
    cpus = max(int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])
    url = context.dashboard_url or ""
    return ClusterInfo(f"http://{url}" if url and "://" not in url else url, cpus,
                       AUTH_TOKEN if AUTH_TOKEN.is_file() else None)


def stop_ray() -> None:
    ray.shutdown()


def _trial(config: dict, stage: str, task, inputs, settings: TrainSettings, use_gpu: bool) -> None:
    """The Tune trainable: run one stage config, report each epoch with a checkpoint, resume from the last."""
    settings = dataclasses.replace(settings, device=select_device(use_gpu))
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume:
        for result in STAGE_TRAIN[stage](config, task, inputs, settings, Path(resume) if resume else None):
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder), result)
                tune.report(result.metrics, checkpoint=tune.Checkpoint.from_directory(folder))


@dataclass(frozen=True)
class SearchOutcome:
    best_config: dict
    best_metrics: dict
    best_checkpoint: Path
    trials: object  # pandas DataFrame: one row per trial, at its best epoch
    errored: list  # (trial id, config, first line of the error)
    wall_seconds: float
    experiment_dir: Path


def _storage(results_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{(results_dir / 'optuna.db').resolve()}")


def reset_study(results_dir: Path, stage: str) -> None:
    """Drop a stage's previous Optuna study so a fresh search starts a fresh study."""
    if not (results_dir / "optuna.db").exists():
        return
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=stage, storage=_storage(results_dir))


def search(stage: str, space: SearchSpace, task, inputs, settings: TrainSettings, *, trials: int, seed: int,
           results_dir: Path, cpus_per_trial: float, gpus_per_trial: float, max_failures: int, resume: bool,
           quiet: bool) -> SearchOutcome:
    """Run (or resume) the Tune search of one stage; returns its best trial's config, metrics and checkpoint."""
    stage_dir = (results_dir / stage).resolve()
    experiment_dir = stage_dir / EXPERIMENT
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, stage=stage, task=task, inputs=inputs, settings=settings,
                             use_gpu=gpus_per_trial > 0),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    started = time.perf_counter()
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher = OptunaSearch(optuna_distributions(space), metric=METRIC, mode=MODE,
                                sampler=optuna.samplers.TPESampler(seed=seed), study_name=stage,
                                storage=_storage(results_dir))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.epochs,
                                  grace_period=max(1, settings.epochs // 4), reduction_factor=2)
        run_config = tune.RunConfig(
            name=EXPERIMENT, storage_path=str(stage_dir), verbose=0 if quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=max_failures))
        tuner = tune.Tuner(trainable, run_config=run_config,
                           tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                                       scheduler=scheduler, num_samples=trials))
    grid = tuner.fit()
    wall_seconds = time.perf_counter() - started
    errored = [(r.metrics.get("trial_id", Path(r.path).name), r.config, str(r.error).strip().splitlines()[-1][:300])
               for r in grid if r.error]
    finished = [r for r in grid if not r.error and r.metrics and METRIC in r.metrics]
    if not finished:
        first = errored[0][2] if errored else "no trial reported a metric"
        raise TunerError(f"stage {stage}: every trial failed ({first}); see {experiment_dir}")
    best = grid.get_best_result(METRIC, MODE, scope="all", filter_nan_and_inf=True)
    checkpoint = best.get_best_checkpoint(METRIC, MODE)
    best_metrics = next(m for c, m in best.best_checkpoints if c.path == checkpoint.path)
    table = grid.get_dataframe(filter_metric=METRIC, filter_mode=MODE)
    return SearchOutcome(dict(best.config), dict(best_metrics), Path(checkpoint.path), table, errored,
                         wall_seconds, experiment_dir)


def wait_for_interrupt(echo) -> None:
    """Keep Ray (and its dashboard) up until Ctrl-C, so finished trials can be browsed."""
    echo("Ray dashboard kept up; press Ctrl-C to stop it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()
