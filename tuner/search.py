"""The only module that imports Ray and Optuna: a Tune search with Optuna's TPE and ASHA over one stage.

Stage code stays plain PyTorch; this module turns its per-epoch results into ``tune.report`` calls with
checkpoints, and the finished search into plain data (best config, metrics, checkpoint path, trials table).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
# Read by Ray at import: with it, a local Ray binds every port (GCS, raylet, workers, agents, metrics) to
# 127.0.0.1; without it, ray.init(_node_ip_address="127.0.0.1") still listens on all interfaces.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The experiment's state (which checkpoint each trial holds) is saved at most this often; Ray's "auto" waits 10 s
# or more, so a driver killed in between resumes trials from older checkpoints, or from scratch. Local storage
# makes a save a few milliseconds.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from tuner import pareto  # noqa: E402
from tuner.config import METRIC, MODE, OBJECTIVES, SHAPE, TrainSettings  # noqa: E402
from tuner.errors import Interrupted, TunerError  # noqa: E402
from tuner.registry import Stage  # noqa: E402
from tuner.spaces import SearchSpace  # noqa: E402
from tuner.training import release_memory, save_checkpoint, select_device  # noqa: E402

log = logging.getLogger(__name__)

EXPERIMENT = "search"  # results/<stage>/search holds Ray's experiment folder
RUNG_MEMORY = "rungs.json"  # in it: what the early-stopping scheduler recorded at its rungs (RungMemory)
AUTH_TOKEN = Path.home() / ".ray" / "auth_token"
REDUCTION_FACTOR = 2  # ASHA keeps the top half of the trials at each rung
# ParetoASHA keeps the top third of a rung's promotion order (at ASHA's rungs): on two objectives a new trial is
# non-dominated far more often than it is above one metric's median: at a half the 40-trial front trained 1.22x the
# epochs of budgeted searches of the same trial count, at a third 1.05x (docs/design.md)
FRONT_REDUCTION_FACTOR = 3
# ...and ranks a trial behind another at a rung only if that one is no larger and leads it in validation F1 by more
# than this: at the seed-1 front benchmark's epoch-6 rung a 1-layer student at E 32 (F1 0.561) stopped as dominated
# by one at E 16 (0.564), a lead well inside a 500-sentence validation set's noise
FRONT_MARGIN = 0.01
GRACE_SHARE = 0.25  # ASHA's first rung: this share of the epoch budget, rounded up
OPTUNA_STARTUP_TRIALS = 10  # TPESampler's default number of random trials before it models the results


@dataclass(frozen=True)
class SearchMethod:
    """How a search proposes configs and stops trials. ``DEFAULT_METHOD`` is tuner's; the others are what
    ``bench/search_efficiency.py`` holds it against (and how it chose the default's three TPE settings)."""

    sampler: str = "tpe"  # "tpe": Optuna's TPE; "random": Optuna's random sampler
    early_stopping: bool = True  # ASHA (ParetoASHA with several objectives); False: every trial runs to the end
    # Each epoch goes to the study as an intermediate value, a trial ASHA stopped is told PRUNED (TPE ranks it
    # below every finished trial, as Optuna's own pruners do) and a finished one its best epoch; without it Ray's
    # OptunaSearch tells every trial COMPLETE with its last reported score, a stopped trial's rung score included.
    pruned_trials: bool = True
    scaled_startup: bool = True  # TPE's random start-up trials: a quarter of the budget, not Optuna's fixed 10
    # the previous stage's best config (the keys both spaces share) is the first trial. Off by default: on the
    # student's recorded table it cost a full-length trial and slowed the search (bench/search_efficiency.py)
    warm_start: bool = False
    # A front search's start-up trials train shapes that span the sizes (``spanning_shapes``) instead of random
    # ones: the 40-trial front benchmark's random draws never tried the shape a 22% budget's search trains.
    spanning_startup: bool = True
    reduction_factor: int = REDUCTION_FACTOR  # ASHA's eta: the top 1/eta of a rung goes on; rungs at grace x eta^k
    grace_share: float = GRACE_SHARE  # ASHA's grace period (its first rung) as a share of the epochs, rounded up
    front_reduction_factor: int = FRONT_REDUCTION_FACTOR  # ParetoASHA: the top 1/this of a rung goes on
    front_margin: float = FRONT_MARGIN  # ParetoASHA: an F1 lead within this dominates nothing at a rung

    def grace(self, epochs: int) -> int:
        """ASHA's grace period for ``epochs`` (``grace_period``)."""
        return grace_period(epochs, self.grace_share)

    def rungs(self, epochs: int) -> set[int]:
        """The epochs at which ASHA may stop a trial (``rung_epochs``): what the scheduler, ``_trial``'s rung
        re-report and the replay must agree on."""
        return rung_epochs(epochs, self.reduction_factor, self.grace_share)


DEFAULT_METHOD = SearchMethod()


def startup_trials(trials: int, method: SearchMethod) -> int:
    """Random trials before TPE models the results: Optuna's 10, or with ``scaled_startup`` a quarter of the
    budget (2 to 10), so a 4- or 8-trial search is not random search."""
    if not method.scaled_startup:
        return OPTUNA_STARTUP_TRIALS
    return min(OPTUNA_STARTUP_TRIALS, max(2, math.ceil(trials / 4)))


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


def shape_label(shape: dict) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(shape.items()))


def spanning_shapes(stage: Stage, inputs, shapes: list[dict], count: int) -> list[dict]:
    """Up to ``count`` shapes that span the sizes, for a front search's start-up trials: at ``count`` evenly spaced
    size levels from the smallest shape to the largest, the one a budgeted search would train at that level (the
    largest in ``stage.sized_by`` order, for the student the deepest, then widest, under it), each once."""
    sized = [(stage.size(inputs, shape), shape) for shape in shapes]
    low, high = min(size for size, _ in sized), max(size for size, _ in sized)
    chosen = []
    for i in range(count):
        level = low + (high - low) * i / max(1, count - 1)
        under = [shape for size, shape in sized if size <= level]
        best = max(under, key=lambda shape: tuple(shape[name] for name in stage.sized_by if name in shape))
        if best not in chosen:
            chosen.append(best)
    return chosen


class ShapedSpace:
    """An Optuna define-by-run space that samples only models inside the budget: the YAML's hyperparameters,
    plus one categorical ``shape`` over the size combinations that fit (``num_layers=3,factor_dim=64``); the
    chosen combination's values join the trial's config. A module-level class, so Tune can pickle it."""

    def __init__(self, space: SearchSpace, shapes: list[dict]):
        self.params = space.params
        self.shapes = {shape_label(shape): dict(shape) for shape in shapes}

    def __call__(self, trial) -> dict:
        for p in self.params:
            if p.type == "choice":
                trial.suggest_categorical(p.name, list(p.values))
            elif p.type == "int":
                trial.suggest_int(p.name, int(p.low), int(p.high))
            else:
                trial.suggest_float(p.name, p.low, p.high, log=p.type == "loguniform")
        return dict(self.shapes[trial.suggest_categorical(SHAPE, list(self.shapes))])


class EpochOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told what tuner's trials are: ``epochs`` long, reporting ``epoch`` (in a
    single-objective search a rung's epoch twice, the second time ``rereport``), stopped early by ASHA. With
    ``pruned_trials`` each epoch is reported to the study once, at its epoch, a trial that stopped before the last epoch is told PRUNED and a finished one
    its best epoch's score (the checkpoint the search keeps of it). ``warm_start``, a partial config, is the
    study's first trial; the sampler draws the keys it lacks. Single-objective only: Optuna has no intermediate
    values for several objectives, so a multi-objective study keeps Ray's behaviour."""

    def __init__(self, space, *, epochs: int, pruned_trials: bool, warm_start: dict | None = None,
                 start_shapes: list[dict] | None = None, **kwargs):
        self._epochs, self._pruned_trials, self._warm_start = epochs, pruned_trials, warm_start
        self._start_shapes = start_shapes or []
        self._best: dict[str, float] = {}  # trial id -> its best epoch's score
        self._reported: dict[str, set] = {}  # trial id -> epochs told to the study
        super().__init__(space, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if self._warm_start:
            self._ot_study.enqueue_trial(dict(self._warm_start), skip_if_exists=True)
        for shape in self._start_shapes:  # the shape fixed, the other hyperparameters drawn by the sampler
            self._ot_study.enqueue_trial({SHAPE: shape_label(shape)}, skip_if_exists=True)

    def _epoch_aware(self) -> bool:
        return self._pruned_trials and not isinstance(self.metric, list)

    def on_trial_result(self, trial_id: str, result: dict):
        if not self._epoch_aware():
            return super().on_trial_result(trial_id, result)
        if trial_id not in self._completed_trials:
            self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """One epoch's score as the study's intermediate value at that epoch (a rung's second report skipped)."""
        if result.get("rereport") or self.metric not in result or "epoch" not in result:
            return
        value, epoch = result[self.metric], int(result["epoch"])
        reported = self._reported.setdefault(trial_id, set())
        if epoch not in reported:
            self._ot_trials[trial_id].report(value, epoch)
            reported.add(epoch)
        self._best[trial_id] = max(self._best.get(trial_id, -math.inf), value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not self._epoch_aware() or error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        # Tune hands the result a scheduler stops a trial on (ASHA's rung, or the last epoch) to this call only
        self._record(trial_id, result)
        trial = self._ot_trials[trial_id]
        if result.get("epoch", self._epochs) < self._epochs:
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # ranked by its last epoch
        else:
            self._ot_study.tell(trial, self._best.get(trial_id, result[self.metric]))
        self._completed_trials.add(trial_id)


class RungMemory:
    """What a scheduler recorded at its rungs, kept in a JSON file (``memory``) as it changes. Ray saves no
    scheduler state: ``--resume`` unpickles the scheduler as it was when the search started, with empty rungs,
    so restarted trials would be judged only against those reaching a rung after the resume. A scheduler with
    this mixin reads the file back before its first decision after a restore."""

    def _start_memory(self, memory: Path | None) -> None:
        self._memory, self._recalled = (None if memory is None else str(memory)), False

    def _records(self) -> list | dict:
        raise NotImplementedError

    def _load_records(self, records) -> None:
        raise NotImplementedError

    def _recall(self) -> None:
        # getattr: a search started by a tuner without this mixin unpickles a scheduler without these fields
        if getattr(self, "_recalled", True):
            return
        self._recalled = True
        if self._memory and os.path.isfile(self._memory):
            try:
                with open(self._memory) as handle:
                    self._load_records(json.load(handle))
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable: Ray's empty rungs
                log.warning("%s: rung records not read back (%s); the rungs start empty", self._memory, exc)

    def _remember(self) -> None:
        """Write the records if they changed since the last write (most results are at no rung)."""
        memory = getattr(self, "_memory", None)
        if not memory or not os.path.isdir(os.path.dirname(memory)):
            return
        text = json.dumps(self._records())
        if text == getattr(self, "_written", None):
            return
        partial = memory + ".partial"
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, memory)  # a driver killed mid-write leaves the last whole file
        self._written = text


class RememberingASHA(RungMemory, ASHAScheduler):
    """Ray's ASHA whose rung records survive ``--resume`` (``RungMemory``)."""

    def __init__(self, *args, memory: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._start_memory(memory)

    def _records(self) -> list:
        return [[recorded for _, recorded in bracket._rungs] for bracket in self._brackets]

    def _load_records(self, records: list) -> None:
        for bracket, rungs in zip(self._brackets, records):
            for (_, recorded), saved in zip(bracket._rungs, rungs):
                recorded.update(saved)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._recall()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._recall()
        action = super().on_trial_result(tune_controller, trial, result)
        self._remember()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._remember()


class ParetoASHA(RungMemory, FIFOScheduler):
    """ASHA for several objectives (MO-ASHA): at each rung a trial goes on only if it is among the best
    1/``reduction_factor`` of the trials recorded there, ranked by non-dominated front (``tuner.pareto``), not
    by F1 alone, or at an end of the rung's front. A trial dominates another there only if it leads it in the
    first objective by more than ``margin`` (``pareto.dominates``). The smallest student on the front of (F1,
    parameters) survives a rung that a plain ASHA would stop it at; a dominated one stops, as does a front member
    between the ends outside those places. The rung epochs are ASHA's (``rung_epochs``); the last epoch stops a
    trial. Its rung records survive ``--resume`` (``RungMemory``)."""

    def __init__(self, objectives: list[tuple[str, str]], max_t: int, rungs: set[int],
                 reduction_factor: float = FRONT_REDUCTION_FACTOR, margin: float = FRONT_MARGIN,
                 time_attr: str = "epoch", memory: Path | None = None):
        super().__init__()
        self._objectives, self._max_t, self._time_attr = list(objectives), max_t, time_attr
        self._reduction_factor, self._margin = reduction_factor, margin
        self._rungs = {epoch: {} for epoch in sorted(rungs)}  # epoch -> trial id -> its point there
        self._stopped = 0
        self._start_memory(memory)

    def _records(self) -> dict:
        return {str(epoch): {trial: list(point) for trial, point in recorded.items()}
                for epoch, recorded in self._rungs.items()}

    def _load_records(self, records: dict) -> None:
        for epoch, recorded in records.items():
            if int(epoch) in self._rungs:
                self._rungs[int(epoch)].update({trial: tuple(point) for trial, point in recorded.items()})

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric is None and mode is None  # its objectives are its own

    def point(self, result: dict) -> tuple:
        """The objectives as values to maximise."""
        return tuple(result[name] if mode == "max" else -result[name] for name, mode in self._objectives)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._recall()
        if self._time_attr not in result or any(name not in result for name, _ in self._objectives):
            return TrialScheduler.CONTINUE
        epoch = result[self._time_attr]
        if epoch >= self._max_t:
            return TrialScheduler.STOP
        recorded = self._rungs.get(epoch)
        if recorded is None or trial.trial_id in recorded:  # not a rung, or decided at its first report
            return TrialScheduler.CONTINUE
        recorded[trial.trial_id] = self.point(result)
        self._remember()
        ids = list(recorded)
        if pareto.keeps([recorded[i] for i in ids], ids.index(trial.trial_id), self._reduction_factor,
                        self._margin):
            return TrialScheduler.CONTINUE
        self._stopped += 1
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"Using ParetoASHA: {self._stopped} stopped at rungs {sorted(self._rungs)}"


@dataclass(frozen=True)
class ClusterInfo:
    dashboard_url: str
    cpus_per_node: int
    gpus_per_node: float
    token_file: Path | None


def dashboard_port(host: str, preferred: int = 8265) -> int:
    """Ray's usual dashboard port when free, else one the OS picks: a second search on the same machine still
    gets a dashboard instead of none."""
    for port in (preferred, 0):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            try:
                probe.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    return preferred


def start_ray(address: str | None, dashboard_host: str, quiet: bool) -> ClusterInfo:
    """Start a local Ray (every port on ``dashboard_host``'s side bound to loopback) or join ``address``."""
    if ray.is_initialized():
        ray.shutdown()
    # --quiet: errors only, which silences the token-authentication notice Ray logs when it starts
    missing = dashboard_missing()
    if missing:
        log.warning("Ray's dashboard is off: ray is installed without its [default] extras (%s)", missing)
    kwargs = dict(include_dashboard=not missing, dashboard_host=dashboard_host, log_to_driver=not quiet,
                  logging_level=logging.ERROR if quiet else logging.WARNING, configure_logging=True)
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise TunerError(f"--address {address}: cannot join a Ray cluster ({first_line(exc)})") from None
    else:
        # "local": a new Ray of our own, even when a cluster started by `ray start` is running here
        context = ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                           _node_ip_address="127.0.0.1",
                           dashboard_port=dashboard_port(dashboard_host), **kwargs)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    url = context.dashboard_url or ""
    return ClusterInfo(f"http://{url}" if url and "://" not in url else url,
                       max(int(n.get("CPU", 0)) for n in nodes), max(n.get("GPU", 0.0) for n in nodes),
                       AUTH_TOKEN if AUTH_TOKEN.is_file() else None)


def dashboard_missing() -> str | None:
    """Why Ray's dashboard cannot start here (ray without its [default] extras, as in the offline GPU bundle),
    or None. Ray's own check; tests/test_search_method.py pins that it exists."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return str(error) if error else None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` address (or ``ray://host:port``) nothing answers at, before ``ray.init`` retries it
    for minutes; ``auto`` and other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TunerError(f"--address {address}: nothing answers there ({exc.strerror or type(exc).__name__}); "
                         "give the head node's GCS address (host:port, as `ray start --head` prints it) or auto") from None


def first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1][:300] if lines else type(error).__name__


def stop_ray() -> None:
    ray.shutdown()


def _trial(config: dict, stage: Stage, task, inputs, settings: TrainSettings, use_gpu: bool,
           rungs: frozenset) -> None:
    """The Tune trainable: run one stage config and report each epoch; checkpoint only an epoch that beats the
    trial's best so far, so the one checkpoint kept per trial is both its best model and where it resumes.

    At an ASHA rung (``rungs``: ``SearchMethod.rungs``) the epoch is reported first without a
    checkpoint. ``tune.report`` returns only once the scheduler lets the trial go on; the checkpoint then follows
    in a second report of the same epoch (its scores again, ``rereport: true``, training and evaluation seconds
    0). A trial ASHA stops writes no checkpoint for
    its last epoch, which cannot be the search's best: ASHA stops only a score below the rung's cutoff, and the
    search's best is above every score recorded there. A front search passes no ``rungs``: ParetoASHA may stop a
    trial whose rung epoch is on the front, and the front needs that epoch's model, so every epoch that beats
    the trial's best is checkpointed in its one report. A trial's last epoch is checkpointed without AdamW's
    moments, since nothing continues from it: a third of the bytes.

    Besides the stage's metrics, each report carries where the trial's time outside training and evaluation
    went: ``setup_seconds`` (first epoch: releasing the previous trial's memory, building the model and optimizer,
    restoring a checkpoint), ``checkpoint_seconds`` (writing this epoch's checkpoint) and ``report_seconds`` (the
    previous report, which hands any checkpoint to Tune's storage), and whether it carries a checkpoint
    (``checkpointed``)."""
    entered = time.perf_counter()
    release_memory()  # a reused process: the previous trial's freed heap slowed this one's training
    settings = dataclasses.replace(settings, device=select_device(use_gpu))
    checkpoint = tune.get_checkpoint()
    best = checkpoint.get_metadata().get(METRIC, -math.inf) if checkpoint else -math.inf
    node_id = ray.get_runtime_context().get_node_id()
    report_seconds = 0.0  # the previous report's
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume:
        for result in stage.train(config, task, inputs, settings, Path(resume) if resume else None):
            metrics = dict(result.metrics, node_id=node_id, checkpoint_seconds=0.0, report_seconds=report_seconds,
                           checkpointed=False, rereport=False)
            if entered is not None:  # the first epoch this process ran, fresh or resumed
                metrics["setup_seconds"] = (time.perf_counter() - entered - metrics["train_seconds"]
                                            - metrics["eval_seconds"])
                entered = None
            if metrics[METRIC] <= best:
                report_seconds = _report(metrics, None)
                continue
            best = metrics[METRIC]
            last = result.epoch + 1 >= settings.epochs
            if result.epoch + 1 in rungs and not last:  # returns only if ASHA keeps the trial
                report_seconds = _report(metrics, None)
                metrics = dict(metrics, train_seconds=0.0, eval_seconds=0.0, report_seconds=report_seconds,
                               rereport=True)
                metrics.pop("setup_seconds", None)
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                save_checkpoint(Path(folder), result, optimizer=not last)
                saved = tune.Checkpoint.from_directory(folder)
                saved.set_metadata({METRIC: best})
                metrics.update(checkpoint_seconds=time.perf_counter() - started, checkpointed=True)
                report_seconds = _report(metrics, saved)


def _report(metrics: dict, checkpoint) -> float:
    """``tune.report``, timed (Tune copies the checkpoint into the trial's folder before it returns)."""
    started = time.perf_counter()
    tune.report(metrics, checkpoint=checkpoint)
    return time.perf_counter() - started


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


def _storage(results_dir: Path) -> optuna.storages.RDBStorage:
    """The results folder's ``optuna.db``; one that is not an Optuna database (damaged, or another program's
    file) is a TunerError naming it."""
    import sqlalchemy.exc

    path = (Path(results_dir) / "optuna.db").resolve()
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}")
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as exc:
        why = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        if why == "file is not a database":  # not another version's or a locked study: nothing in it to keep
            why += "; move it away to start a fresh one"
        raise TunerError(f"{path}: not a readable Optuna database ({why})") from None


def check_storage(results_dir: Path) -> None:
    """Refuse a damaged ``optuna.db`` before a run changes anything (a missing one is created by the search)."""
    if (Path(results_dir) / "optuna.db").exists():
        _storage(results_dir)


def grace_period(epochs: int, share: float = GRACE_SHARE) -> int:
    """ASHA's first rung: ``share`` of the epoch budget, rounded up (at a quarter: 3 of 10, 2 of 6, 1 of 3), so a
    trial with a high learning rate or temperature, slow in its first epoch, is not judged on it alone."""
    return max(1, math.ceil(round(epochs * share, 9)))  # round: 10 x 0.3 is 3.0000000000000004


def rung_epochs(epochs: int, reduction_factor: int = REDUCTION_FACTOR, grace_share: float = GRACE_SHARE) -> set[int]:
    """The epochs below the budget at which ASHA may stop a trial: the grace period times powers of the
    reduction factor (at 2: 3 and 6 of 10 epochs, 1 and 2 of 3; at 3: 3 and 9 of 10, 1 of 3)."""
    rungs, epoch = set(), grace_period(epochs, grace_share)
    while epoch < epochs:
        rungs.add(epoch)
        epoch *= reduction_factor
    return rungs


def reset_study(results_dir: Path, stage: str) -> None:
    """Drop a stage's previous Optuna study so a fresh search starts a fresh study."""
    if not (results_dir / "optuna.db").exists():
        return
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=stage, storage=_storage(results_dir))


def search(stage: Stage, space: SearchSpace, task, inputs, settings: TrainSettings, *, trials: int, seed: int,
           results_dir: Path, cpus_per_trial: float, gpus_per_trial: float, max_failures: int, resume: bool,
           quiet: bool, reuse_actors: bool = True, objectives: tuple[str, ...] = ("f1",),
           shapes: list[dict] | None = None, method: SearchMethod = DEFAULT_METHOD,
           warm_start: dict | None = None) -> SearchOutcome:
    """Run (or resume) the Tune search of one stage; returns its best trial's config, metrics and checkpoint,
    and every trial's best checkpoint. With several ``objectives`` the study is multi-objective (Optuna's TPE
    over a list of metrics), ``shapes`` are the size combinations it may sample, and ParetoASHA stops trials.
    ``method`` picks the sampler and early stopping; ``warm_start`` is a partial config to try first. A front
    search's start-up trials train ``spanning_shapes`` (with ``method.spanning_startup``)."""
    stage_dir = (results_dir / stage.name).resolve()
    experiment_dir = stage_dir / EXPERIMENT
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, stage=stage, task=task, inputs=inputs, settings=settings,
                             use_gpu=gpus_per_trial > 0,
                             rungs=frozenset(method.rungs(settings.epochs) if len(objectives) == 1 else ())),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if quiet:  # before the searcher: creating its study logs "A new study created"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True,
                                   resume_errored=False)  # errored trials stay errored: --max-failures retries
    else:
        start_shapes = shapes and spanning_shapes(stage, inputs, shapes, startup_trials(trials, method))
        searcher, scheduler, metric, mode = search_algorithms(stage, space, settings.epochs, seed, results_dir,
                                                              objectives, shapes, trials=trials, method=method,
                                                              warm_start=warm_start, start_shapes=start_shapes)
        run_config = tune.RunConfig(
            name=EXPERIMENT, storage_path=str(stage_dir), verbose=0 if quiet else 1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=max_failures))
        # reuse_actors: the next trial runs in the finished trial's process, so it does not start Python, import
        # torch and transformers, and load the model code again.
        # Trials of a few seconds then all run in the first process; --process-per-trial turns it off.
        tuner = tune.Tuner(trainable, run_config=run_config,
                           tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher,
                                                       scheduler=scheduler, num_samples=trials,
                                                       reuse_actors=reuse_actors))
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        grid = tuner.fit()  # Tune prints its progress tables to stdout whatever its verbosity
    wall_seconds = time.perf_counter() - started
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
    table = trials_table(grid)
    kept = [{"trial_id": trial_id(result), "config": dict(result.config), "metrics": dict(metrics),
             "checkpoint": Path(saved.path)}
            for result in grid for saved, metrics in (result.best_checkpoints or [])[:1]]
    return SearchOutcome(dict(best.config), dict(best_metrics), Path(checkpoint.path), table, errored,
                         wall_seconds, experiment_dir, settings.threads, kept)


def search_algorithms(stage: Stage, space: SearchSpace, epochs: int, seed: int, results_dir: Path,
                      objectives: tuple[str, ...], shapes: list[dict] | None, trials: int,
                      method: SearchMethod = DEFAULT_METHOD, warm_start: dict | None = None,
                      start_shapes: list[dict] | None = None):
    """(searcher, scheduler, Tune's metric, Tune's mode): Optuna's TPE (or random search) and ASHA on F1, or,
    with several objectives, TPE over their list and ParetoASHA (Tune then has no single metric); FIFO, which
    stops nothing, without early stopping."""
    if method.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials, method))
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    warm_start = warm_start if method.warm_start else None
    memory = (Path(results_dir) / stage.name / EXPERIMENT / RUNG_MEMORY).resolve()
    if len(objectives) == 1:
        searcher = EpochOptunaSearch(optuna_distributions(space), epochs=epochs, pruned_trials=method.pruned_trials,
                                     warm_start=warm_start, metric=METRIC, mode=MODE, sampler=sampler,
                                     study_name=stage.name, storage=_storage(results_dir))
        # time_attr "epoch", not training_iteration: a rung's epoch can be reported twice (see _trial)
        scheduler = (RememberingASHA(time_attr="epoch", max_t=epochs,
                                     grace_period=method.grace(epochs),
                                     reduction_factor=method.reduction_factor, memory=memory)
                     if method.early_stopping else FIFOScheduler())
        return searcher, scheduler, METRIC, MODE
    metrics, modes = zip(*(OBJECTIVES[name] for name in objectives))
    searcher = EpochOptunaSearch(ShapedSpace(space, shapes), epochs=epochs, pruned_trials=False,
                                 warm_start=warm_start, start_shapes=start_shapes if method.spanning_startup else None,
                                 metric=list(metrics), mode=list(modes), sampler=sampler,
                                 study_name=stage.name, storage=_storage(results_dir))
    scheduler = ParetoASHA(list(zip(metrics, modes)), max_t=epochs,
                           rungs=method.rungs(epochs), reduction_factor=method.front_reduction_factor,
                           margin=method.front_margin, memory=memory) if method.early_stopping else FIFOScheduler()
    return searcher, scheduler, None, None


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


def study_trials(results_dir: Path, stage: str) -> tuple[list, dict]:
    """A stage's Optuna study from ``optuna.db``: its trials (number, value, params, and ``pruned``: stopped
    early, valued at its last epoch) and the hyperparameter importances (fANOVA over all of them; empty with
    fewer than two)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per in-memory proxy study
    if not (Path(results_dir) / "optuna.db").exists():
        return [], {}  # (opening the storage would create an empty database)
    try:
        study = optuna.load_study(study_name=stage, storage=_storage(results_dir))
    except KeyError:
        return [], {}
    # (trial, value, stopped early): a finished trial's value (F1 first), a stopped one's at its last epoch
    scored = [(t, t.values[0], False) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    scored += [(t, t.intermediate_values[max(t.intermediate_values)], True) for t in study.trials
               if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    scored.sort(key=lambda item: item[0].number)
    trials = [{"number": t.number, "value": value, "params": dict(t.params), "pruned": pruned}
              for t, value, pruned in scored]
    importances = {}
    if len(scored) >= 2:  # over every told trial, a stopped one at its last epoch (fANOVA reads COMPLETE ones)
        proxy = optuna.create_study(directions=study.directions)
        for t, value, pruned in scored:
            proxy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                      values=[value] if pruned else t.values))
        with contextlib.suppress(RuntimeError, ValueError):
            importances = dict(optuna.importance.get_param_importances(
                proxy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda trial: trial.values[0]))
    return trials, importances
