"""The searcher: Optuna behind Tune. The YAML space as Optuna domains, a front search's space of shapes under the
budget (``ShapedSpace``) and its start-up shapes, and Ray's ``OptunaSearch`` told what tuner's trials are."""

from __future__ import annotations

import math
import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

from tuner.config import SHAPE
from tuner.registry import Stage
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
    """Ray's OptunaSearch, told what tuner's trials are: ``epochs`` long, reporting ``epoch`` (in a
    single-objective search a rung's epoch twice, the second time ``rereport``), stopped early by ASHA. With
    ``pruned_trials`` each epoch is reported to the study once, at its epoch, a trial that stopped before the last
    epoch is told PRUNED and a finished one its best epoch's score (the checkpoint the search keeps of it).
    ``warm_start``, a partial config, is the study's first trial; the sampler draws the keys it lacks.
    Single-objective only: Optuna has no intermediate values for several objectives, so a multi-objective study
    keeps Ray's behaviour."""

    def __init__(self, space, *, epochs: int, pruned_trials: bool, warm_start: dict | None = None,
                 start_shapes: list[dict] | None = None, **kwargs):
        self._epochs, self._pruned_trials, self._warm_start = epochs, pruned_trials, warm_start
        self._start_shapes = start_shapes or []
        self._best: dict[str, float] = {}  # trial id -> its best epoch's score
        self._reported: dict[str, set] = {}  # trial id -> epochs told to the study
        super().__init__(space, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # the objectives by name (optuna-dashboard shows "0" and "1" without them); experimental since Optuna 3.2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(self.metric) if isinstance(self.metric, list) else [self.metric])
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
