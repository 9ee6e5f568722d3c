"""Searches survive a killed driver, failing trials are recorded and skipped, and the same seed repeats a search."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import ROOT, WHOLE_NODE, run_cli, write
from tuner.search import rung_epochs


def trial_results(experiment: Path) -> dict:
    """trial id -> list of reported results (result.json holds one JSON object per line)."""
    found = {}
    for folder in experiment.iterdir():
        path = folder / "result.json"
        if folder.is_dir() and path.is_file():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            found[folder.name] = lines
    return found


def start_driver(args: list) -> subprocess.Popen:
    """``python -m tuner.run ARGS`` in its own session (a signal reaches the driver alone), stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "tuner.run", *map(str, args)], cwd=ROOT, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def wait_until(driver: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    """Poll ``ready()`` every 0.2 s until it holds; fail naming ``what`` if the driver ends or time runs out first."""
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        if ready():
            return
        time.sleep(0.2)
    driver.kill()
    _, err = driver.communicate()
    pytest.fail(f"never reached {what} (driver exit {driver.returncode}): {err[-2000:]}")


@pytest.mark.slow
def test_an_interrupted_search_resumes_after_ctrl_c_and_after_a_killed_driver(tmp_path, conll_dir):
    """One search interrupted twice. Ctrl-C ends Tune's loop as if the search had finished: tuner says it was
    interrupted (one line, status 130), saves no best model and keeps the unfinished trials' optimizer state.
    Its --resume is then killed outright (SIGKILL) mid-search, and a second --resume finishes it: the trials that
    had finished are kept as they were, one restarts from its checkpoint, and every trial is told to the study."""
    from tuner.training import OPTIMIZER_FILE

    results = tmp_path / "results"
    args = ["--stage", "teacher", "--trials", 3, "--profile", "smoke", "--epochs", 4, "--train-sentences", 200,
            "--data", conll_dir, "--results-dir", results, "--seed", 1, "--quiet"]
    experiment = results / "teacher" / "search"

    def reports() -> dict:
        return trial_results(experiment) if experiment.is_dir() else {}

    def partial(found: dict) -> list:  # trials that checkpointed an epoch before their last and are not done
        return [t for t, r in found.items()
                if r and not r[-1].get("done") and r[-1]["epoch"] < 4 and any(x["checkpointed"] for x in r)]

    driver = start_driver(args)
    wait_until(driver, lambda: partial(reports()), "a running trial with a checkpoint")
    os.kill(driver.pid, signal.SIGINT)  # the driver alone, as a terminal's Ctrl-C reaches Python
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage teacher: search interrupted with") and "--resume" in last, last
    assert not (results / "teacher" / "best").exists()
    assert any((c / OPTIMIZER_FILE).is_file() for c in experiment.glob("*/checkpoint_*"))  # nothing pruned

    # kill the resumed driver once a trial has reported since it started, one is running with a checkpoint, and
    # Tune has saved the experiment's state since (at most a second later: what a resume reads a checkpoint from)
    counts = {t: len(r) for t, r in reports().items()}
    seen = {}

    def progressed() -> bool:
        found = reports()
        for t in partial(found):
            seen.setdefault(t, time.time())
        saved = max((p.stat().st_mtime for p in experiment.glob("experiment_state-*.json")), default=0)
        moved = any(len(r) > counts.get(t, 0) for t, r in found.items())
        return moved and any(saved > seen[t] for t in partial(found))

    driver = start_driver([*args, "--resume"])
    wait_until(driver, progressed, "a resumed trial's report with a running trial checkpointed")
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    time.sleep(2)
    before = reports()
    finished_before = {t: r for t, r in before.items() if r and r[-1].get("done")}

    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = reports()
    assert len(after) == 3  # the requested trial count, no more
    for trial, found in finished_before.items():
        assert after[trial] == found  # completed trials kept as they were
    resumed = [r for t, r in after.items() if t not in finished_before and t in before and before[t]]
    assert resumed and any(r[-1]["iterations_since_restore"] < r[-1]["training_iteration"] for r in resumed)
    study = optuna.load_study(study_name="teacher", storage=f"sqlite:///{results / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    # every trial told: finished ones COMPLETE, those ASHA stopped PRUNED
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 3, states
    assert (results / "teacher" / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_failing_trials_are_recorded_and_skipped(tmp_path, conll_dir):
    spaces = tmp_path / "spaces"
    for stage in ("teacher", "factorized", "student"):
        write(spaces / f"{stage}.yaml", (ROOT / "search_spaces" / "smoke" / f"{stage}.yaml").read_text())
    # learning rates above ~1e20 overflow the weights after one AdamW step: the loss turns NaN
    write(spaces / "teacher.yaml", """params:
  learning_rate: {type: choice, values: [1.0e-3, 1.0e+30]}
  weight_decay: {type: uniform, low: 0.0, high: 0.1}
  warmup_ratio: {type: uniform, low: 0.0, high: 0.0}
""")
    results = tmp_path / "results"
    proc = run_cli("--stage", "teacher", "--trials", 4, "--profile", "smoke", "--data", conll_dir,
                   "--results-dir", results, "--space-dir", spaces, "--seed", 3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((results / "teacher" / "best" / "result.json").read_text())
    errored = record["errored_trials"]
    assert errored and all(e["config"]["learning_rate"] == 1e30 for e in errored)
    assert all("non-finite loss" in e["error"] for e in errored)
    assert record["hyperparameters"]["learning_rate"] == 1e-3
    assert "errored trial" in proc.stdout
    with open(results / "teacher" / "trials.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4


@pytest.mark.slow
def test_same_seed_same_configs_and_scores(pipeline_run, tmp_path, conll_dir):
    first, _ = pipeline_run  # seed 0, 2 trials: its teacher search is what this run repeats
    results = tmp_path / "results"
    proc = run_cli("--stage", "teacher", "--trials", 2, "--profile", "smoke", "--data", conll_dir,
                   "--results-dir", results, *WHOLE_NODE)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def trials(folder):
        with open(folder / "teacher" / "trials.csv") as handle:
            rows = list(csv.DictReader(handle))
        keys = [k for k in rows[0] if k.startswith("config/")] + ["val_f1"]
        return sorted(tuple(row[k] for k in keys) for row in rows)

    assert trials(results) == trials(first)
    # every report says where the trial's time outside training and evaluation went (bench section 4 reads these)
    for reports in trial_results(results / "teacher" / "search").values():
        opening = reports[0]
        assert opening["setup_seconds"] > 0 and all("setup_seconds" not in r for r in reports[1:])
        # epoch 1 is a rung of the 2-epoch smoke search: reported before ASHA decides, checkpointed only in its
        # second report, once ASHA keeps the trial
        assert reports[0]["epoch"] in rung_epochs(2) and not reports[0]["checkpointed"]
        assert all(r["checkpoint_seconds"] > 0 for r in reports if r["checkpointed"])
        assert opening["train_seconds"] + opening["eval_seconds"] + opening["setup_seconds"] <= \
            opening["time_this_iter_s"]
        assert all(r["report_seconds"] >= 0 and r["checkpoint_seconds"] >= 0 for r in reports)
    assert yaml.safe_load((results / "best_configs.yaml").read_text())["teacher"]["val_f1"] == \
        yaml.safe_load((first / "best_configs.yaml").read_text())["teacher"]["val_f1"]


@pytest.mark.slow
def test_checkpoints_only_where_a_trial_goes_on(tmp_path, conll_dir):
    """A rung's epoch is checkpointed only once ASHA keeps the trial (a second report of that epoch); once the
    search has ended, no checkpoint keeps AdamW's moments (nothing continues a finished trial)."""
    from tuner.training import OPTIMIZER_FILE, STATE_FILE

    results = tmp_path / "results"
    proc = run_cli("--stage", "teacher", "--trials", 4, "--profile", "smoke", "--epochs", 3, "--data", conll_dir,
                   "--results-dir", results)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rungs = rung_epochs(3)
    assert rungs == {1, 2}
    stopped = 0
    for trial, reports in trial_results(results / "teacher" / "search").items():
        folder = results / "teacher" / "search" / trial
        for before, report in zip(reports, reports[1:]):
            if report["rereport"]:  # the checkpoint of the epoch just reported, with its scores again
                assert before["epoch"] == report["epoch"] in rungs and not before["checkpointed"]
                assert report["checkpointed"] and report["val_f1"] == before["val_f1"]
                assert report["train_seconds"] == report["eval_seconds"] == 0.0
        last = reports[-1]
        if last["epoch"] in rungs and not last["checkpointed"] and last["epoch"] < 3:
            stopped += 1  # ASHA stopped it at a rung: that epoch left no checkpoint
        kept = list(folder.glob("checkpoint_*"))
        checkpointed = [r["epoch"] for r in reports if r["checkpointed"]]
        assert len(kept) == (1 if checkpointed else 0), trial
        for checkpoint in kept:
            epoch = json.loads((checkpoint / STATE_FILE).read_text())["epoch"] + 1
            assert epoch == checkpointed[-1]  # only a trial's best-so-far epoch is checkpointed: the last is its best
            assert not (checkpoint / OPTIMIZER_FILE).exists()
    assert stopped, "no trial was stopped at a rung: the test did not exercise the probe report"
    assert (results / "teacher" / "best" / "model.safetensors").is_file()
    disk = json.loads((results / "teacher" / "best" / "result.json").read_text())["checkpoint_bytes"]
    assert disk["before"] > disk["after"] > 0  # the moments of the checkpoints of epochs before the last went


def test_a_finished_search_drops_optimizer_states_and_keeps_what_is_asked(tmp_path):
    from tuner.search import prune_checkpoints
    from tuner.training import OPTIMIZER_FILE, STATE_FILE

    def checkpoint(trial):
        folder = tmp_path / "search" / trial / "checkpoint_000001"
        write(folder / "model.safetensors", "w" * 100)
        write(folder / OPTIMIZER_FILE, "m" * 200)
        write(folder / STATE_FILE, "{}")
        return folder

    best, other = checkpoint("trial_a"), checkpoint("trial_b")
    assert prune_checkpoints(tmp_path / "search", best, "all") == {"before": 2 * 302, "after": 2 * 102}
    assert sorted(p.name for p in best.iterdir()) == sorted(p.name for p in other.iterdir()) == \
        ["model.safetensors", STATE_FILE]
    assert prune_checkpoints(tmp_path / "search", best, "best") == {"before": 204, "after": 102}
    assert best.is_dir() and not other.exists()


@pytest.mark.parametrize("front_search", [False, True])
def test_a_new_search_clears_what_describes_an_earlier_best(tmp_path, front_search):
    """After a search, an earlier search's deployed model goes (it was the old best's), and after a search of F1
    alone so does an earlier front (a front search writes its own); the new best and the search stay."""
    from tuner.pipeline import clear_stale_outputs

    for name in ("deploy/deploy.json", "pareto/1.0M-L1-E8/config.json", "pareto.csv", "best/result.json",
                 "search/experiment_state.json", "search_settings.yaml"):
        write(tmp_path / name, "{}")
    clear_stale_outputs(tmp_path, front_search=front_search)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    front = ["pareto.csv", "pareto/1.0M-L1-E8/config.json"] if front_search else []
    assert left == sorted(["best/result.json", "search/experiment_state.json", "search_settings.yaml", *front])


def test_best_checkpoint_skips_a_score_reported_without_one():
    """A trial that errored (or was interrupted) between a rung's report and the one carrying its checkpoint has
    the top score but no checkpoint of it: the search's best is the best score that has a checkpoint, from a
    trial that ended without error while there is one (an errored config, retrained, fails again)."""
    from types import SimpleNamespace

    from tuner.errors import TunerError
    from tuner.search import best_checkpoint

    def trial(name, checkpoints, error=None):
        return SimpleNamespace(config={"name": name}, error=error, best_checkpoints=[
            (SimpleNamespace(path=f"/{name}/{f1}"), {"val_f1": f1}) for f1 in checkpoints])

    cut_short = trial("cut short", [0.80], RuntimeError("x"))  # reported 0.90 at a rung, errored before saving it
    grid = [cut_short, trial("finished", [0.70, 0.85]), trial("stopped", []), trial("nan", [float("nan")])]
    result, checkpoint, metrics = best_checkpoint(grid, "teacher", Path("/x"))
    assert result.config["name"] == "finished" and checkpoint.path == "/finished/0.85" and metrics["val_f1"] == 0.85
    diverged = trial("diverged", [0.90], FloatingPointError("non-finite loss at epoch 3"))  # best at epoch 2
    result, checkpoint, _ = best_checkpoint([diverged, trial("finished", [0.85])], "teacher", Path("/x"))
    assert result.config["name"] == "finished" and checkpoint.path == "/finished/0.85"
    result, checkpoint, _ = best_checkpoint([diverged, trial("stopped", [])], "teacher", Path("/x"))
    assert checkpoint.path == "/diverged/0.9"  # no other checkpoint: the errored trial's is kept, not lost
    with pytest.raises(TunerError, match="no trial saved a checkpoint"):
        best_checkpoint([trial("stopped", [])], "teacher", Path("/x"))


@pytest.mark.slow
def test_a_search_over_two_nodes_survives_losing_one(tmp_path, conll_dir):
    """Two nodes on loopback share the trials; the second is killed under a trial that has checkpointed an epoch:
    with tuner's default retries on a cluster, that trial goes on from its checkpoint on the head, and the search
    ends with every trial finished, none run again from its first epoch, and the best model saved."""
    proc = subprocess.run([sys.executable, "scripts/two_node_cluster.py", "--results-dir", str(tmp_path / "results"),
                           "--trials", "3", "--data", str(conll_dir), "--kill-second-node"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "3 trials on 2 nodes" in proc.stdout and "node lost: every trial finished" in proc.stdout, proc.stdout
    record = json.loads((tmp_path / "results" / "teacher" / "best" / "result.json").read_text())
    assert record["errored_trials"] == []
    assert (tmp_path / "results" / "teacher" / "best" / "model.safetensors").is_file()
