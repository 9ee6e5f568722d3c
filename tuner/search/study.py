"""The Optuna study of each stage, kept in the results folder's ``optuna.db`` (SQLite): opened, checked before a
run changes anything, dropped for a fresh search, and read back for the report."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna

from tuner.errors import TunerError

STOPPED_SCORES = "stopped_scores"  # a PRUNED trial's user attribute: its scores at the epoch it stopped

DATABASE = "optuna.db"  # in the results folder: one study per stage, named after it


def open_storage(results_dir: Path) -> optuna.storages.RDBStorage:
    """The results folder's ``optuna.db``; one that is not an Optuna database (damaged, or another program's
    file) is a TunerError naming it."""
    import sqlalchemy.exc

    path = (Path(results_dir) / DATABASE).resolve()
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}")
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as exc:
        why = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        if why == "file is not a database":  # not another version's or a locked study: nothing in it to keep
            why += "; move it away to start a fresh one"
        raise TunerError(f"{path}: not a readable Optuna database ({why})") from None


def check_storage(results_dir: Path) -> None:
    """Refuse a damaged ``optuna.db`` before a run changes anything (a missing one is created by the search)."""
    if (Path(results_dir) / DATABASE).exists():
        open_storage(results_dir)


def reset_study(results_dir: Path, stage: str) -> None:
    """Drop a stage's previous Optuna study so a fresh search starts a fresh study."""
    if not (Path(results_dir) / DATABASE).exists():
        return
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=stage, storage=open_storage(results_dir))


def study_trials(results_dir: Path, stage: str) -> tuple[list, dict]:
    """A stage's Optuna study from ``optuna.db``: its trials (number, value, params, and ``pruned``: stopped
    early, valued at its last epoch) and the hyperparameter importances (fANOVA over all of them; empty with
    fewer than two)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per in-memory proxy study
    if not (Path(results_dir) / DATABASE).exists():
        return [], {}  # (opening the storage would create an empty database)
    try:
        study = optuna.load_study(study_name=stage, storage=open_storage(results_dir))
    except KeyError:
        return [], {}
    # (trial, values, stopped early): a finished trial's values (F1 first), a stopped one's at its last epoch
    scored = [(t, t.values, False) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = [(t, stopped_values(t), True) for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    scored += [item for item in stopped if item[1]]
    scored.sort(key=lambda item: item[0].number)
    trials = [{"number": t.number, "value": values[0], "params": dict(t.params), "pruned": pruned}
              for t, values, pruned in scored]
    return trials, importances(study, scored)


def stopped_values(trial) -> list | None:
    """A stopped (PRUNED) trial's scores at its last epoch: its intermediate value in a single-objective study,
    the scores it was stopped on in a front search (``STOPPED_SCORES``); None for one with neither."""
    if trial.intermediate_values:
        return [trial.intermediate_values[max(trial.intermediate_values)]]
    return trial.user_attrs.get(STOPPED_SCORES) or None


def importances(study: optuna.Study, scored: list) -> dict:
    """fANOVA importances over every told trial, a stopped one at its last epoch (fANOVA reads COMPLETE ones);
    empty with fewer than two."""
    scored = [(t, values) for t, values, _ in scored if len(values) == len(study.directions)]
    if len(scored) < 2:
        return {}
    proxy = optuna.create_study(directions=study.directions)
    for t, values in scored:
        proxy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, values=values))
    with contextlib.suppress(RuntimeError, ValueError):
        return dict(optuna.importance.get_param_importances(
            proxy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda trial: trial.values[0]))
    return {}
