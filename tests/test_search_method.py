"""What TPE learns from (per-epoch values, stopped trials PRUNED, start-up trials scaled to the budget, the warm
start) and the search-efficiency replay that chose them: each checked on hand-made results."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))


def teacher_space():
    from tuner import registry
    from tuner.config import SEARCH_SPACE_DIR
    from tuner.spaces import load_space

    return load_space(registry.by_name("teacher"), SEARCH_SPACE_DIR / "teacher.yaml")


def algorithms(tmp_path, method, trials=8, warm=None):
    from tuner import registry, search

    tmp_path.mkdir(parents=True, exist_ok=True)
    return search.search_algorithms(registry.by_name("teacher"), teacher_space(), 3, 0, tmp_path, ("f1",), None,
                                    trials=trials, method=method, warm_start=warm)


def test_startup_trials_scale_with_the_budget():
    from tuner.search import DEFAULT_METHOD, SearchMethod, startup_trials

    scaled = SearchMethod(scaled_startup=True)
    assert [startup_trials(n, scaled) for n in (1, 4, 8, 20, 40, 100)] == [2, 2, 2, 5, 10, 10]
    assert startup_trials(4, SearchMethod(scaled_startup=False)) == 10  # Optuna's default: 4 trials were random
    assert DEFAULT_METHOD.scaled_startup and startup_trials(8, DEFAULT_METHOD) == 2  # tuner's default scales


def test_stopped_trials_are_pruned_and_finished_ones_keep_their_best_epoch(tmp_path):
    """As Tune calls it: results the scheduler lets go on reach on_trial_result; the one it stops a trial on
    reaches on_trial_complete only."""
    import optuna

    from tuner.search import SearchMethod

    searcher, _, _, _ = algorithms(tmp_path, SearchMethod(pruned_trials=True))
    for trial in ("full", "stopped"):
        searcher.suggest(trial)
    searcher.on_trial_result("full", {"val_f1": 0.60, "epoch": 1})
    searcher.on_trial_result("full", {"val_f1": 0.60, "epoch": 1, "rereport": True})  # the rung's checkpoint
    searcher.on_trial_result("full", {"val_f1": 0.85, "epoch": 2})
    searcher.on_trial_complete("full", {"val_f1": 0.84, "epoch": 3})  # the last epoch: ASHA stops it there
    searcher.on_trial_complete("stopped", {"val_f1": 0.55, "epoch": 1})  # ASHA stopped it at its first rung
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    full, stopped = study.trials
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == 0.85  # its best epoch, not its last
    assert full.intermediate_values == {1: 0.60, 2: 0.85, 3: 0.84}
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.intermediate_values == {1: 0.55}


def test_without_pruned_trials_a_stopped_trial_is_complete_at_its_rung_score(tmp_path):
    import optuna

    from tuner.search import SearchMethod

    searcher, _, _, _ = algorithms(tmp_path, SearchMethod(pruned_trials=False))
    searcher.suggest("stopped")
    searcher.on_trial_complete("stopped", {"val_f1": 0.55, "epoch": 1, "training_iteration": 1})
    (stopped,) = optuna.load_study(study_name="teacher", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert stopped.state == optuna.trial.TrialState.COMPLETE and stopped.value == 0.55  # Ray's OptunaSearch


def test_warm_start_is_the_first_trial_and_the_sampler_draws_the_rest(tmp_path):
    from tuner.search import SearchMethod

    warm = {"learning_rate": 3.3e-5, "weight_decay": 0.07}
    searcher, _, _, _ = algorithms(tmp_path, SearchMethod(warm_start=True), warm=warm)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["learning_rate"] == 3.3e-5 and first["weight_decay"] == 0.07
    assert 0.0 <= first["warmup_ratio"] <= 0.2  # not in the warm start: sampled
    assert second["learning_rate"] != 3.3e-5
    cold, _, _, _ = algorithms(tmp_path / "cold", SearchMethod(warm_start=False), warm=warm)
    assert cold.suggest("a")["learning_rate"] != 3.3e-5


def test_the_method_picks_sampler_and_scheduler(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuner.search import SearchMethod

    searcher, scheduler, _, _ = algorithms(tmp_path, SearchMethod(sampler="random", early_stopping=False))
    assert type(scheduler) is FIFOScheduler and type(searcher._sampler).__name__ == "RandomSampler"
    searcher, scheduler, _, _ = algorithms(tmp_path / "tpe", SearchMethod(), trials=20)
    assert isinstance(scheduler, ASHAScheduler) and searcher._sampler._n_startup_trials == 5
    assert searcher._sampler._constant_liar  # trials packed at once are not proposed into one region


def test_search_settings_come_from_the_run_settings_and_say_whether_the_search_is_a_front():
    from pathlib import Path

    from tuner import registry
    from tuner.config import RunSettings, resolve_profile
    from tuner.packing import Packing
    from tuner.search import DEFAULT_METHOD, SearchSettings

    settings = RunSettings(stages=(registry.by_name("student"),), trials=6, profile=resolve_profile("smoke", False),
                           seed=3, results_dir="out", gpus_per_trial=0.5, max_failures=2, quiet=True,
                           process_per_trial=True, objectives=("f1", "params"))
    shapes, warm = [{"num_layers": 1, "factor_dim": 8}], {"learning_rate": 1e-4}
    packed = Packing(cpus_per_trial=2, gpus_per_trial=0.25, threads=2, trials_at_once=4, reason="measured")
    plan = SearchSettings.of(settings, packed=packed, resume=True, shapes=shapes, warm_start=warm)
    assert plan == SearchSettings(trials=6, seed=3, results_dir=Path("out"), cpus_per_trial=2, gpus_per_trial=0.25,
                                  max_failures=2, resume=True, quiet=True, reuse_actors=False,
                                  objectives=("f1", "params"), shapes=shapes, method=DEFAULT_METHOD, warm_start=warm)
    assert plan.front
    single = SearchSettings.of(dataclasses.replace(settings, objectives=("f1",)), packed=packed, resume=False,
                               shapes=None, warm_start=None)
    assert not single.front
    for mismatch in (dict(objectives=("f1", "params")), dict(shapes=shapes)):  # a front without shapes; F1 with them
        with pytest.raises(ValueError, match="only a front search, samples shapes"):
            dataclasses.replace(single, **mismatch)


def test_shared_point_keeps_shared_keys_in_range():
    from tuner.spaces import shared_point

    space = teacher_space()  # learning_rate [1e-5, 2e-4], weight_decay [0, 0.1], warmup_ratio [0, 0.2]
    assert shared_point(space, {"learning_rate": 5e-5, "weight_decay": 0.5, "warmup_ratio": 0.1,
                                "temperature": 3.0}) == {"learning_rate": 5e-5, "warmup_ratio": 0.1}
    assert shared_point(space, {"learning_rate": True, "weight_decay": "x"}) == {}


def test_warm_start_reads_the_previous_stage_best(tmp_path):
    from tuner import registry
    from tuner.config import RunSettings, resolve_profile
    from tuner.pipeline import warm_start
    from tuner.spaces import load_space

    student = registry.by_name("student")
    settings = RunSettings(stages=(student,), trials=2, profile=resolve_profile("cpu", False), results_dir=tmp_path)
    space = load_space(student, settings.space_file("student"))
    assert warm_start(student, settings, space) == {}  # no earlier stage saved anything
    for stage, lr in (("teacher", 6e-5), ("factorized", 2e-4)):
        (tmp_path / stage / "best").mkdir(parents=True)
        (tmp_path / stage / "best" / "result.json").write_text(json.dumps(
            {"hyperparameters": {"learning_rate": lr, "weight_decay": 0.05, "warmup_ratio": 0.3}}))
    # the nearest earlier stage: factorized; warmup 0.3 is outside the student's [0, 0.2]
    assert warm_start(student, settings, space) == {"learning_rate": 2e-4, "weight_decay": 0.05}
    (tmp_path / "factorized" / "best" / "result.json").write_text("{not json")
    assert warm_start(student, settings, space) == {}  # an unreadable record only loses the warm start


# ---- the replay (bench/search_efficiency.py) ---------------------------------------------------------------------

def test_replay_maps_a_config_to_the_nearest_recorded_one_on_the_spaces_scale():
    from bench.search_efficiency import Replay, unit

    lr = {"name": "learning_rate", "type": "loguniform", "low": 1e-5, "high": 1e-3}
    wd = {"name": "weight_decay", "type": "uniform", "low": 0.0, "high": 0.1}
    assert unit(lr, 1e-4) == pytest.approx(0.5) and unit(wd, 0.025) == pytest.approx(0.25)
    assert unit({"type": "choice", "values": [16, 32, 64]}, 32) == 0.5
    replay = Replay([lr, wd], [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]], [[0.1], [0.2], [0.3]], "")
    assert replay.nearest({"learning_rate": 1.2e-4, "weight_decay": 0.04}) == 1
    assert replay.nearest({"learning_rate": 2e-5, "weight_decay": 0.09}) == 1  # 2e-5 is near 1e-5, but weight decay 0.09 is not near 0
    assert replay.nearest({"learning_rate": 1.1e-5, "weight_decay": 0.01}) == 0


def test_anytime_curve_and_time_to_target():
    from bench.search_efficiency import anytime, best_at, time_to, trials_to

    table = {"prepare_seconds": 5.0, "configs": [
        {"setup_seconds": 1.0, "epochs": [{"train_seconds": 9.0, "eval_seconds": 1.0}] * 3}]}
    lines = [{"epoch": 1, "val_f1": 0.5}, {"epoch": 2, "val_f1": 0.7}, {"epoch": 1, "val_f1": 0.6},
             {"epoch": 1, "val_f1": 0.8}]
    result = anytime(lines, table)
    assert result["curve"] == [(16.0, 0.5), (26.0, 0.7), (37.0, 0.7), (48.0, 0.8)]
    assert result["trials"] == 3 and result["epochs"] == 4 and result["best"] == 0.8
    assert result["started"] == [1, 1, 2, 3]
    assert trials_to(result, 0.65) == 1 and trials_to(result, 0.75) == 3 and math.isinf(trials_to(result, 0.9))
    assert time_to(result["curve"], 0.75) == 48.0 and math.isinf(time_to(result["curve"], 0.9))
    assert best_at(result["curve"], 30.0) == 0.7 and best_at(result["curve"], 10.0) == -math.inf


def test_replay_runs_each_method_through_tuners_searcher_and_scheduler():
    """On a synthetic table: ASHA trains fewer epochs than FIFO, and the same seed replays the same search."""
    from bench.search_efficiency import methods, replay_search, synthetic_table

    table = synthetic_table("teacher", 8, 3)
    plain, _ = methods()
    asha = replay_search("teacher", table, plain["tuner (TPE + ASHA)"], 8, 0, None)
    fifo = replay_search("teacher", table, plain["TPE, no early stopping"], 8, 0, None)
    assert fifo["epochs"] == 8 * 3 and asha["trials"] == 8 and asha["epochs"] < fifo["epochs"]
    assert replay_search("teacher", table, plain["tuner (TPE + ASHA)"], 8, 0, None)["lines"] == asha["lines"]


@pytest.mark.slow
def test_quick_search_efficiency_matches_tune_and_writes_its_report(tmp_path):
    """The smoke mode end to end, with --verify: Tune itself trains what the in-process replay trains."""
    report = tmp_path / "search_efficiency.md"
    proc = subprocess.run([sys.executable, "bench/search_efficiency.py", "--quick", "--verify", "--stages", "teacher",
                           "--output", report], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = report.read_text()
    assert text.count("- Verified:") == 2 and "| tuner (TPE + ASHA) |" in text and "| random, no early stopping |" in text
    # the command it names is the one that ran: --stages and --table change the figures
    assert f"`python bench/search_efficiency.py --quick --verify --stages teacher --output {report}`" in text
    assert (tmp_path / "search_efficiency_teacher.png").stat().st_size > 10_000
    assert json.loads(report.with_suffix(".json").read_text())[0]["stage"] == "teacher"
    headlines = json.loads((tmp_path / "benchmarks.json").read_text())["headlines"]
    assert len(headlines) == 2  # each names the table its replays ran on
    assert all(h["details"]["table"] == "a synthetic table (--quick), 10 configs" for h in headlines)


def test_search_efficiency_refuses_a_missing_table(tmp_path, capsys):
    from bench import search_efficiency

    status = search_efficiency.main(["--stages", "teacher", "--table", f"teacher={tmp_path / 'none.json'}",
                                     "--output", str(tmp_path / "out.md")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "none.json: no table" in err
    assert not (tmp_path / "out.md").exists()


def test_beta_is_searched_only_in_a_front_search(tiny_model):
    """The hidden-state weight pays off at the front's small end: a search of F1 alone leaves it out (and then
    caches no teacher layer outputs); a front search samples it."""
    from tuner import registry
    from tuner.config import SEARCH_SPACE_DIR
    from tuner.plan import search_plan, single_objective_space
    from tuner.spaces import load_space, value_ranges

    student = registry.by_name("student")
    space = load_space(student, SEARCH_SPACE_DIR / "student.yaml")
    assert "beta" in space.names() and "beta" not in value_ranges(single_objective_space(student, space))
    from types import SimpleNamespace

    inputs = SimpleNamespace()
    single, _ = search_plan(student, space, inputs, ("f1",))
    assert "beta" not in single.names() and "num_layers" not in single.names()
    front = dataclasses.replace(student, budget=lambda _: None, size=lambda _, shape: 1)
    several, shapes = search_plan(front, space, inputs, ("f1", "params"))
    assert "beta" in several.names() and shapes


def test_ashas_reduction_factor_is_the_methods(tmp_path):
    """ASHA's eta is a setting of the method: its rungs (grace x eta^k) and the share of a rung that goes on."""
    from tuner.search import DEFAULT_METHOD, SearchMethod, rung_epochs

    assert rung_epochs(10, 2) == {3, 6} and rung_epochs(10, 3) == {3, 9} and rung_epochs(3, 3) == {1}
    assert rung_epochs(10) == rung_epochs(10, DEFAULT_METHOD.reduction_factor)
    decisions = {}
    for eta in (2, 3):  # five trials reach the first rung; the last one's F1 is the rung's median
        _, scheduler, _, _ = algorithms(tmp_path / str(eta), SearchMethod(reduction_factor=eta))
        scheduler.set_search_properties("val_f1", "max")
        for number, f1 in enumerate((0.70, 0.80, 0.90, 0.60, 0.78)):
            trial = SimpleNamespace(trial_id=str(number))
            scheduler.on_trial_add(None, trial)
            decision = scheduler.on_trial_result(None, trial, {"val_f1": f1, "epoch": 1, "training_iteration": 1})
        decisions[eta] = decision
    assert decisions == {2: "CONTINUE", 3: "STOP"}  # the top half keeps the median; the top third does not


def test_ashas_first_rung_is_the_methods_share_of_the_epochs(tmp_path):
    """ASHA's grace period is a share of the epochs (rounded up): at a tenth, a 10-epoch trial meets its first rung
    at epoch 1, where the default (a quarter) lets every trial reach epoch 3."""
    from tuner import registry, search
    from tuner.search import DEFAULT_METHOD, SearchMethod, grace_period, rung_epochs

    assert rung_epochs(10, 2, 0.1) == {1, 2, 4, 8} and rung_epochs(10, 2, 0.3) == {3, 6}
    assert grace_period(3) == grace_period(3, 0.1) == 1 and grace_period(10) == 3 == grace_period(10, 0.3)
    decisions = {}
    for share in (DEFAULT_METHOD.grace_share, 0.1):  # the second of two trials at epoch 1, below the first
        folder = tmp_path / str(share)
        folder.mkdir()
        _, scheduler, _, _ = search.search_algorithms(registry.by_name("teacher"), teacher_space(), 10, 0, folder,
                                                      ("f1",), None, trials=8,
                                                      method=SearchMethod(grace_share=share, reduction_factor=2))
        scheduler.set_search_properties("val_f1", "max")
        for number, f1 in enumerate((0.80, 0.50, 0.60)):
            trial = SimpleNamespace(trial_id=str(number))
            scheduler.on_trial_add(None, trial)
            decisions.setdefault(share, []).append(
                scheduler.on_trial_result(None, trial, {"val_f1": f1, "epoch": 1, "training_iteration": 1}))
    assert decisions == {DEFAULT_METHOD.grace_share: ["CONTINUE"] * 3, 0.1: ["CONTINUE", "STOP", "STOP"]}


def test_rays_dashboard_check_is_where_tuner_reads_it():
    """tuner.search.dashboard_missing calls Ray's own check (a private function): with ray[default] installed, as
    here, it finds nothing missing; an upgrade that moves the function fails here, not in a search."""
    from tuner.search import dashboard_missing

    assert dashboard_missing() is None


@pytest.mark.parametrize("pruned_trials", [True, False])
def test_a_front_searchs_stopped_trial_cannot_enter_the_studys_front_with_its_early_f1(tmp_path, pruned_trials):
    """In a front search ParetoASHA stops trials at a rung: told PRUNED (tuner's default), a small trial stopped
    at epoch 1 stays out of the study's Pareto front, which TPE's split ranks by, however its early F1 compares;
    a finished trial is told its best epoch's (F1, parameters). Ray's behaviour (COMPLETE at the rung's score)
    would put the stopped trial on the front: the ablation shows the check can fail."""
    import optuna

    from tuner import registry, search
    from tuner.config import SEARCH_SPACE_DIR
    from tuner.search import SearchMethod
    from tuner.search.study import study_trials
    from tuner.spaces import load_space

    stage = registry.by_name("student")
    shapes = [{"num_layers": 1, "factor_dim": 8}, {"num_layers": 3, "factor_dim": 32}]
    searcher, _, _, _ = search.search_algorithms(stage, load_space(stage, SEARCH_SPACE_DIR / "student.yaml"), 3, 0,
                                                 tmp_path, ("f1", "params"), shapes, trials=8,
                                                 method=SearchMethod(pruned_trials=pruned_trials))
    for trial in ("full", "stopped"):
        searcher.suggest(trial)
    searcher.on_trial_result("full", {"val_f1": 0.60, "parameters": 9_000_000, "epoch": 1})
    searcher.on_trial_result("full", {"val_f1": 0.60, "parameters": 9_000_000, "epoch": 1, "rereport": True})
    searcher.on_trial_result("full", {"val_f1": 0.85, "parameters": 9_000_000, "epoch": 2})
    searcher.on_trial_complete("full", {"val_f1": 0.84, "parameters": 9_000_000, "epoch": 3})
    searcher.on_trial_complete("stopped", {"val_f1": 0.40, "parameters": 2_000_000, "epoch": 1})
    study = optuna.load_study(study_name="student", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    full, stopped = study.trials
    front = [t.number for t in study.best_trials]
    if pruned_trials:
        assert full.state == optuna.trial.TrialState.COMPLETE and full.values == [0.85, 9_000_000]  # best epoch
        assert stopped.state == optuna.trial.TrialState.PRUNED and front == [full.number]
        # the report still shows it, at the scores it stopped on
        trials, _ = study_trials(tmp_path, "student")
        assert [(t["value"], t["pruned"]) for t in trials] == [(0.85, False), (0.40, True)]
    else:
        assert stopped.values == [0.40, 2_000_000] and front == [full.number, stopped.number]


def test_a_searcher_saved_with_one_best_score_per_trial_restores_as_lists(tmp_path):
    """An earlier tuner's searcher state kept each trial's best score as a float; restored, it holds one-element
    lists, which the scores of later epochs are compared with and a finished trial is told."""
    from tuner.search import SearchMethod

    searcher, _, _, _ = algorithms(tmp_path, SearchMethod(pruned_trials=True))
    searcher.suggest("old")
    searcher._best = {"old": 0.61}
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored, _, _, _ = algorithms(tmp_path / "restored", SearchMethod(pruned_trials=True))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored._best == {"old": [0.61]}
    restored.on_trial_result("old", {"val_f1": 0.58, "epoch": 2})
    restored.on_trial_complete("old", {"val_f1": 0.57, "epoch": 3})
    assert restored._ot_study.trials[0].value == 0.61
