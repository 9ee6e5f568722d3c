"""How a search proposes configs and stops trials (``SearchMethod``), and the rungs ASHA judges trials at: the
settings ``tuner.search`` and ``bench/search_efficiency.py``'s replay share. Plain values; no Ray or Optuna here."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
# ParetoASHA's first rung: a tenth of the epochs (rungs 1, 2, 4 and 8 of 10). Replayed on the README's 40-trial
# front (python -m bench rungs), it trained 0.53x the trial time of rungs 3 and 6 for a validation hypervolume 0.005
# lower; a slow starter is still kept where it is an end of the rung's front
FRONT_GRACE_SHARE = 0.1
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
    front_grace_share: float = FRONT_GRACE_SHARE  # ParetoASHA's first rung, as ``grace_share`` is ASHA's

    def grace(self, epochs: int) -> int:
        """ASHA's grace period for ``epochs`` (``grace_period``)."""
        return grace_period(epochs, self.grace_share)

    def rungs(self, epochs: int) -> set[int]:
        """The epochs at which ASHA may stop a trial (``rung_epochs``): what the scheduler, ``_trial``'s rung
        re-report and the replay must agree on."""
        return rung_epochs(epochs, self.reduction_factor, self.grace_share)

    def front_rungs(self, epochs: int) -> set[int]:
        """The epochs at which ParetoASHA may stop a front search's trial: ASHA's doubling from its own first rung
        (``front_grace_share``)."""
        return rung_epochs(epochs, self.reduction_factor, self.front_grace_share)


DEFAULT_METHOD = SearchMethod()


def startup_trials(trials: int, method: SearchMethod) -> int:
    """Random trials before TPE models the results: Optuna's 10, or with ``scaled_startup`` a quarter of the
    budget (2 to 10), so a 4- or 8-trial search is not random search."""
    if not method.scaled_startup:
        return OPTUNA_STARTUP_TRIALS
    return min(OPTUNA_STARTUP_TRIALS, max(2, math.ceil(trials / 4)))


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
