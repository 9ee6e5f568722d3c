"""The searcher: Optuna behind Tune. The YAML space as Optuna domains, a front search's space of shapes under the
budget (``ShapedSpace``) and its start-up shapes, and Ray's ``OptunaSearch`` told what tuner's trials are."""

from __future__ import annotations

import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

from tuner.config import METRIC, SHAPE
from tuner.registry import Stage
from tuner.search.study import STOPPED_SCORES
from tuner.spaces import SearchSpace


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
    """Ray's OptunaSearch, told what tuner's trials are: ``epochs`` long, reporting ``epoch`` (a rung's epoch
    twice, the second time ``rereport``), stopped early by ASHA or ParetoASHA. With ``pruned_trials`` a trial that
    stopped before the last epoch is told PRUNED and a finished one its best epoch's scores (the checkpoint the
    search keeps of it), so a stopped trial's early F1 never stands in the study, or in TPE's split, beside
    finished trials' final ones; in a single-objective search each epoch is also reported to the study once, at
    its epoch (Optuna takes no intermediate values for several objectives, so TPE ranks a multi-objective study's
    PRUNED trials after every complete one). Without it, Ray's behaviour: a stopped trial is COMPLETE at its last
    score. ``warm_start``, a partial config, is the study's first trial; the sampler draws the keys it lacks."""

    def __init__(self, space, *, epochs: int, pruned_trials: bool, warm_start: dict | None = None,
                 start_shapes: list[dict] | None = None, **kwargs):
        self._epochs, self._pruned_trials, self._warm_start = epochs, pruned_trials, warm_start
        self._start_shapes = start_shapes or []
        self._best: dict[str, list[float]] = {}  # trial id -> its best epoch's scores, in the metrics' order
        self._reported: dict[str, set] = {}  # trial id -> epochs told to the study
        super().__init__(space, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # the objectives by name (optuna-dashboard shows "0" and "1" without them); experimental since Optuna 3.2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(self._metrics())
        if self._warm_start:
            self._ot_study.enqueue_trial(dict(self._warm_start), skip_if_exists=True)
        for shape in self._start_shapes:  # the shape fixed, the other hyperparameters drawn by the sampler
            self._ot_study.enqueue_trial({SHAPE: shape_label(shape)}, skip_if_exists=True)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        # a searcher saved by an earlier tuner kept each trial's best score alone, not its list of scores
        self._best = {trial: best if isinstance(best, list) else [best] for trial, best in self._best.items()}

    def _metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def on_trial_result(self, trial_id: str, result: dict):
        if not self._pruned_trials:
            return super().on_trial_result(trial_id, result)
        if trial_id not in self._completed_trials:
            self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """One epoch's scores: in a single-objective study its intermediate value at that epoch (a rung's second
        report skipped); the trial's best epoch by F1 (the first objective that is F1, else the first) kept."""
        metrics = self._metrics()
        if result.get("rereport") or "epoch" not in result or any(m not in result for m in metrics):
            return
        values, epoch = [result[m] for m in metrics], int(result["epoch"])
        reported = self._reported.setdefault(trial_id, set())
        if len(metrics) == 1 and epoch not in reported:
            self._ot_trials[trial_id].report(values[0], epoch)
            reported.add(epoch)
        key = metrics.index(METRIC) if METRIC in metrics else 0
        best = self._best.get(trial_id)
        if best is None or values[key] > best[key]:
            self._best[trial_id] = values

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not self._pruned_trials or error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        # Tune hands the result a scheduler stops a trial on (ASHA's rung, or the last epoch) to this call only
        self._record(trial_id, result)
        trial = self._ot_trials[trial_id]
        if result.get("epoch", self._epochs) < self._epochs:
            # its scores where it stopped, for the report (a multi-objective trial has no intermediate values)
            if all(m in result for m in self._metrics()):
                trial.set_user_attr(STOPPED_SCORES, [result[m] for m in self._metrics()])
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # ranked by its last epoch
        else:
            best = self._best.get(trial_id) or [result[m] for m in self._metrics()]
            self._ot_study.tell(trial, best if len(best) > 1 else best[0])
        self._completed_trials.add(trial_id)
