"""The Optuna study of each stage, kept in the results folder's ``optuna.db`` (SQLite): opened, checked before a
run changes anything, dropped for a fresh search, and read back for the report."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna

from tuner.errors import TunerError

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
    # (trial, value, stopped early): a finished trial's value (F1 first), a stopped one's at its last epoch
    scored = [(t, t.values[0], False) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    scored += [(t, t.intermediate_values[max(t.intermediate_values)], True) for t in study.trials
               if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    scored.sort(key=lambda item: item[0].number)
    trials = [{"number": t.number, "value": value, "params": dict(t.params), "pruned": pruned}
              for t, value, pruned in scored]
    return trials, importances(study, scored)


def importances(study: optuna.Study, scored: list) -> dict:
    """fANOVA importances over every told trial, a stopped one at its last epoch (fANOVA reads COMPLETE ones);
    empty with fewer than two."""
    if len(scored) < 2:
        return {}
    proxy = optuna.create_study(directions=study.directions)
    for t, value, pruned in scored:
        proxy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                  values=[value] if pruned else t.values))
    with contextlib.suppress(RuntimeError, ValueError):
        return dict(optuna.importance.get_param_importances(
            proxy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda trial: trial.values[0]))
    return {}
