"""The only package that imports Ray and Optuna: a Tune search with Optuna's TPE and ASHA over one stage.

Stage code stays plain PyTorch. One job a module: ``cluster`` starts and stops Ray; ``method`` says how a search
proposes configs and stops trials; ``searcher`` puts Optuna behind Tune; ``asha`` and ``pareto_asha`` are the
two schedulers; ``study`` keeps the Optuna study in SQLite; ``trainable`` runs one trial and reports its epochs;
``run`` starts or resumes the search and returns it as plain data. Every public name is importable from here.
"""

import os

# Read by Ray when it is first imported, so set before any module of this package imports it.
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
# With it, a local Ray binds every port (GCS, raylet, workers, agents, metrics) to 127.0.0.1; without it,
# ray.init(_node_ip_address="127.0.0.1") still listens on all interfaces.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The experiment's state (which checkpoint each trial holds) is saved at most this often; Ray's "auto" waits 10 s
# or more, so a driver killed in between resumes trials from older checkpoints, or from scratch. Local storage
# makes a save a few milliseconds.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from tuner.config import SHAPE  # noqa: E402
from tuner.search.asha import RememberingASHA, RungMemory  # noqa: E402
from tuner.search.cluster import (AUTH_TOKEN, ClusterInfo, check_reachable, dashboard_missing,  # noqa: E402
                                  dashboard_port, start_ray, stop_ray, wait_for_interrupt)
from tuner.search.method import (DEFAULT_METHOD, FRONT_MARGIN, FRONT_REDUCTION_FACTOR, GRACE_SHARE,  # noqa: E402
                                 OPTUNA_STARTUP_TRIALS, REDUCTION_FACTOR, SearchMethod, grace_period, rung_epochs,
                                 startup_trials)
from tuner.search.pareto_asha import ParetoASHA  # noqa: E402
from tuner.search.run import (EXPERIMENT, RUNG_MEMORY, SearchOutcome, SearchSettings, best_checkpoint,  # noqa: E402
                              prune_checkpoints, search, search_algorithms, trial_id, trials_table)
from tuner.search.searcher import (EpochOptunaSearch, ShapedSpace, optuna_distributions, shape_label,  # noqa: E402
                                   spanning_shapes)
from tuner.search.study import DATABASE, check_storage, reset_study, study_trials  # noqa: E402
# A search started before the package split pickled its trainable as tuner.search._trial: --resume reads it here
from tuner.search.trainable import _trial  # noqa: E402,F401

__all__ = [
    "AUTH_TOKEN", "DATABASE", "DEFAULT_METHOD", "EXPERIMENT", "FRONT_MARGIN", "FRONT_REDUCTION_FACTOR", "GRACE_SHARE",
    "OPTUNA_STARTUP_TRIALS", "REDUCTION_FACTOR", "RUNG_MEMORY", "SHAPE", "ClusterInfo", "EpochOptunaSearch",
    "ParetoASHA", "RememberingASHA", "RungMemory", "SearchMethod", "SearchOutcome", "SearchSettings", "ShapedSpace",
    "best_checkpoint", "check_reachable", "check_storage", "dashboard_missing", "dashboard_port",
    "grace_period", "optuna_distributions", "prune_checkpoints", "reset_study", "rung_epochs", "search",
    "search_algorithms", "shape_label", "spanning_shapes", "start_ray", "startup_trials", "stop_ray",
    "study_trials", "trial_id", "trials_table", "wait_for_interrupt",
]
