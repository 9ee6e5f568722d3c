"""The early-stopping scheduler of a front search (``--objectives f1,params``): ASHA's rungs, with trials ranked
at each by non-dominated front (MO-ASHA, as Syne Tune's ``moasha.py``) instead of by F1 alone."""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuner import pareto
from tuner.search.asha import RungMemory
from tuner.search.method import FRONT_MARGIN, FRONT_REDUCTION_FACTOR


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
