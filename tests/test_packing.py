"""Trials at once (tuner.packing): the choice from a measured step, the flags that override it, and what --resume
keeps of it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import ROOT, on_one_core, run_main, snapshot
from tuner import packing, registry, resume, run
from tuner.config import RunSettings, resolve_profile, train_settings
from tuner.errors import TunerError
from tuner.task import SEARCH_SETTINGS
from tuner.search.cluster import ClusterInfo
from tuner.spaces import Param, SearchSpace

GiB = 2**30


@pytest.mark.parametrize("gpus_per_trial, cpus_per_node, gpus_per_node, expected", [
    (0.0, 16, 1.0, 16),   # no GPU asked for: a trial takes the node, one at a time
    (0.25, 16, 1.0, 4),   # a quarter of the GPU: a quarter of the CPUs, so four trials run at once
    (0.5, 16, 1.0, 8),
    (0.5, 16, 8.0, 1),    # half of one of eight GPUs: a sixteenth of the node
    (1.0, 2, 1.0, 2),
    (0.25, 2, 1.0, 1),    # at least one CPU
    (0.25, 16, 0.0, 16),  # no GPU on the node (refused elsewhere): unchanged
])
def test_cpus_per_trial_follow_the_gpu_share(gpus_per_trial, cpus_per_node, gpus_per_node, expected):
    assert packing.share_of_cpus(gpus_per_trial, cpus_per_node, gpus_per_node) == expected


def test_a_step_between_the_two_measurements_follows_amdahl():
    # 1.0 s at 1 thread, 0.625 s at 4: half of the step is serial ((0.625 - 1/4) / (1 - 1/4))
    assert packing.step_time(1.0, 0.625, 4, 2) == pytest.approx(0.5 + 0.5 / 2)
    assert packing.step_time(1.0, 0.4, 8, 4) == pytest.approx(17 / 35)  # serial (0.4 - 1/8) / (7/8) = 11/35
    assert packing.step_time(1.0, 1.2, 4, 2) == pytest.approx(1.0)  # slower on every core: all serial
    assert packing.step_time(0.0, 0.0, 2, 1) == packing.SHORTEST_STEP  # a step too fast to time divides nothing


def test_a_search_runs_in_waves_of_the_trials_at_once():
    # 3 trials of 1000 steps, 2 at once at 1 s a step: two waves, and one worker's start
    assert packing.search_seconds(1.0, 0.6, 2, 1, trials=3, trial_steps=1000) == pytest.approx(2000 + 10)
    assert packing.search_seconds(1.0, 0.6, 2, 2, trials=3, trial_steps=1000) == pytest.approx(1800)


@pytest.mark.parametrize("one, every, cores, threads, at_once", [
    (0.095, 0.082, 2, 1, 2),    # the cpu profile's student, measured: a step barely gains from a second core
    (1.0, 0.52, 2, 2, 1),       # a step that scales: one trial on both cores
    (1.0, 0.58, 2, 1, 2),       # 1.16x from packing: just over PACKING_GAIN
    (1.0, 0.57, 2, 2, 1),       # 1.14x: not worth sharing the node
    (1.0, 0.625, 4, 1, 4),      # 2.5x
    (1.0, 0.3, 4, 1, 4),        # 1.2x
    (1.0, 0.27, 4, 4, 1),       # 1.08x
    (1.0, 1.3, 2, 1, 2),        # slower on every core than on one
])
def test_cpu_packing_follows_the_measured_step(one, every, cores, threads, at_once):
    chosen = packing.choose_cpu(one, every, cores, trial_bytes=GiB, available_bytes=64 * GiB, trials=40,
                                trial_steps=2000)
    assert (chosen.threads, chosen.trials_at_once, chosen.cpus_per_trial, chosen.gpus_per_trial) == \
        (threads, at_once, threads, 0.0)
    assert chosen.step_seconds == {1: one, cores: every}


def test_cpu_packing_is_capped_by_memory_and_trials():
    step = dict(one=1.0, every=1.0, cores=8, trial_steps=100)  # no gain from threads: eight trials would be best
    assert packing.choose_cpu(**step, trial_bytes=GiB, available_bytes=100 * GiB, trials=40).trials_at_once == 8
    # 3.2 GiB of 4 GiB may be taken: three trials fit, so four of 2 threads (the next divisor) do not; two of 4 do
    assert packing.choose_cpu(**step, trial_bytes=GiB, available_bytes=4 * GiB, trials=40).trials_at_once == 2
    alone = packing.choose_cpu(**step, trial_bytes=GiB, available_bytes=GiB, trials=40)
    assert alone.trials_at_once == 1 and "1 trial fit in memory" in alone.reason
    assert packing.choose_cpu(**step, trial_bytes=GiB, available_bytes=None, trials=3).trials_at_once == 2


@pytest.mark.parametrize("peak, per_gpu", [(10 * GiB, 4), (20 * GiB, 3), (30 * GiB, 2), (63 * GiB, 1),
                                            (70 * GiB, 1)])
def test_gpu_share_follows_the_trial_memory(peak, per_gpu):
    # 80% of 80 GiB shared by trials of their peak plus a CUDA context (1 GiB) each: 31 GiB fit twice, 21 three times
    chosen = packing.choose_gpu(peak, 80 * GiB, gpus_per_node=2.0, cpus_per_node=16, step=0.05, trials=40)
    assert chosen.gpus_per_trial == pytest.approx(1 / per_gpu)
    assert chosen.trials_at_once == 2 * per_gpu
    assert chosen.cpus_per_trial == max(1, int(16 * (1 / per_gpu) / 2))  # the node's CPUs shared the same way


def test_gpu_share_spreads_few_trials_and_counts_the_cpus():
    spread = packing.choose_gpu(GiB, 80 * GiB, gpus_per_node=8.0, cpus_per_node=64, step=0.05, trials=4)
    assert spread.gpus_per_trial == 1.0 and spread.trials_at_once == 8  # a GPU each, not four on one
    few_cpus = packing.choose_gpu(GiB, 80 * GiB, gpus_per_node=1.0, cpus_per_node=2, step=0.05, trials=40)
    assert few_cpus.gpus_per_trial == 0.25 and few_cpus.cpus_per_trial == 1 and few_cpus.trials_at_once == 2


def test_trials_shorter_than_a_worker_start_stay_one_at_a_time():
    # the smoke profile's teacher: 0.02 s steps at 1 and 2 threads, 8 steps a trial; 2 of them are 0.3 s of training
    quick = packing.choose_cpu(0.02, 0.02, 2, trial_bytes=GiB, available_bytes=64 * GiB, trials=2, trial_steps=8)
    assert quick.trials_at_once == 1 and "would not end the search" in quick.reason
    # the same step over a cpu-profile student's 1,880 steps: a second worker's 10 s start is soon paid back
    assert packing.choose_cpu(0.02, 0.02, 2, trial_bytes=GiB, available_bytes=64 * GiB, trials=2,
                              trial_steps=1880).trials_at_once == 2


def test_given_flags_win_and_say_so():
    chosen = packing.given(1, 0.0, cpus_per_node=2, gpus_per_node=0)
    assert (chosen.trials_at_once, chosen.threads) == (2, 1) and "given" in chosen.reason
    assert packing.given(0, 0.25, cpus_per_node=16, gpus_per_node=1).trials_at_once == 4
    whole = packing.given(0, 0.0, cpus_per_node=2, gpus_per_node=0)
    assert (whole.trials_at_once, whole.threads) == (1, 2)
    assert packing.recorded(chosen.record(), "s.yaml").record() == chosen.record()  # the recorded entry comes back
    measured = packing.choose_cpu(0.1, 0.08, 2, GiB, None, 40, 1000)
    assert packing.recorded(measured.described(), "s.yaml").record() == measured.record()
    assert measured.described()["step_seconds"] == {"1": 0.1, "2": 0.08} and "sooner" in measured.described()["reason"]
    for damaged in ({"cpus_per_trial": 1}, {**chosen.record(), "threads": "many"}, {**chosen.record(), "threads": 0},
                    "text"):
        with pytest.raises(TunerError, match="^s.yaml: packing"):
            packing.recorded(damaged, "s.yaml")


def test_typical_config_is_the_middle_of_the_space_and_the_largest_shape():
    stage = registry.by_name("student")
    space = SearchSpace("student", None, (
        Param("learning_rate", "loguniform", 1e-5, 1e-3), Param("alpha", "uniform", 0.0, 0.5),
        Param("num_layers", "int", 1, 4), Param("layer_reach", "choice", values=(0.0, 0.5, 1.0))), "")
    sized = dataclasses.replace(stage, size=lambda inputs, shape: shape["num_layers"] * shape["factor_dim"])
    shapes = [{"num_layers": 1, "factor_dim": 64}, {"num_layers": 3, "factor_dim": 32},
              {"num_layers": 2, "factor_dim": 32}]
    config = packing.typical_config(sized, space, None, shapes)
    assert config == {"learning_rate": pytest.approx(1e-4), "alpha": 0.25, "num_layers": 3, "factor_dim": 32,
                      "layer_reach": 0.5}


@pytest.fixture(scope="module")
def smoke_teacher(conll_dir):
    """The smoke teacher stage's settings, task and inputs (a tiny random BERT, seconds)."""
    from tuner.task import load_task, stage_inputs

    stage = registry.teacher_stage()
    settings = RunSettings(stages=(stage,), trials=4, profile=resolve_profile("smoke", False), data=str(conll_dir))
    task, tokenizer = load_task(settings, None)
    return stage, settings, task, stage_inputs(stage, settings, task, None, len(tokenizer))


def test_measurement_times_the_stage_and_leaves_the_driver_as_it_was(smoke_teacher, caplog):
    stage, settings, task, inputs = smoke_teacher
    trial = train_settings(settings.profile, 3, 0, 1)
    threads = torch.get_num_threads()
    with caplog.at_level("INFO"):  # as a search without --quiet logs
        chosen = packing.measure(stage, {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.0}, task,
                                 inputs, trial, cpus_per_node=2, gpus_per_node=0, trials=4)
    assert not [r.getMessage() for r in caplog.records if r.name == "tuner.training"]  # no timed epoch's line
    assert torch.get_num_threads() == threads
    assert set(chosen.step_seconds) == {1, 2} and all(0 < s < 5 for s in chosen.step_seconds.values())
    # the smoke teacher's trials train for a fraction of a second: a second worker's start would outlast them
    assert (chosen.trials_at_once, chosen.threads) == (1, 2) and "measured in" in chosen.reason


def test_inputs_bytes_count_every_tensor_once():
    shared = torch.zeros(10, dtype=torch.float32)
    inputs = {"a": [shared, shared], "b": (torch.zeros(3, dtype=torch.int64), "text", 5)}
    assert packing.tensor_bytes(inputs) == 40 + 24


def cluster(cpus=2, gpus=0.0):
    return ClusterInfo(dashboard_url="", cpus_per_node=cpus, gpus_per_node=gpus, token_file=None)


@pytest.fixture
def packing_of(smoke_teacher, tmp_path, monkeypatch):
    """``packing.for_stage`` of the smoke teacher under changed settings, with ``packing.measure`` replaced
    by a record of its calls (it returns two trials at once) unless ``fails`` says what it raises."""
    from tuner.spaces import load_space

    stage, settings, task, inputs = smoke_teacher
    space = load_space(stage, settings.space_file(stage.name))
    calls = []

    def stage_packing(node=None, resume=False, fails=None, cuda=False, **changes):
        def measure(*args, **kwargs):
            calls.append(args)
            if fails:
                raise fails
            return packing.given(1, 0, 2, 0)

        monkeypatch.setattr(packing, "measure", measure)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        changed = dataclasses.replace(settings, results_dir=tmp_path, **changes)
        return packing.for_stage(stage, changed, space, inputs, None, task, None, node or cluster(), resume)

    stage_packing.calls, stage_packing.folder = calls, tmp_path / stage.name
    return stage_packing


def test_stage_packing_measures_only_where_it_can(packing_of):
    assert packing_of().trials_at_once == 2 and len(packing_of.calls) == 1  # measured
    flagged = packing_of(node=cluster(gpus=1.0), cpus_per_trial=2)
    assert (flagged.cpus_per_trial, flagged.gpus_per_trial) == (2, 1.0)  # --cpus-per-trial alone: 1 GPU with CUDA
    assert packing_of(node=cluster(cpus=16, gpus=1.0), gpus_per_trial=0.25).trials_at_once == 4
    for unmeasured, reason in ((dict(trials=1), "a single trial"), (dict(node=cluster(cpus=1)), "one core"),
                               (dict(address="auto"), "a joined cluster"),
                               (dict(node=cluster(gpus=1.0)), "not this driver's")):
        whole = packing_of(**unmeasured)
        assert whole.trials_at_once == 1 and reason in whole.reason, whole
    assert packing_of(node=cluster(gpus=1.0)).gpus_per_trial == 1.0  # GPUs it cannot time: one each
    assert len(packing_of.calls) == 1
    packing_of(node=cluster(gpus=1.0), cuda=True)
    assert packing_of.calls[-1][6] == 1.0  # timed on the GPU
    packing_of(node=cluster(gpus=1.0), gpus_per_trial=0.0)
    assert packing_of.calls[-1][6] == 0.0  # --gpus-per-trial 0: the CPUs' packing, timed


def test_a_failed_timing_falls_back_to_one_trial_per_node(packing_of):
    whole = packing_of(fails=FloatingPointError("non-finite loss at epoch 1"))
    assert whole.trials_at_once == 1 and whole.threads == 2
    assert "timing a trial failed: non-finite loss at epoch 1" in whole.reason
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the run
        packing_of(fails=KeyboardInterrupt())


def test_a_resumed_search_packs_as_it_started(packing_of):
    record = packing.Packing(1.0, 0.0, 1, 2, "measured").record()
    packing_of.folder.mkdir()
    (packing_of.folder / SEARCH_SETTINGS).write_text(yaml.safe_dump({"packing": record}))
    for flags in ({}, {"cpus_per_trial": 1}):
        resumed = packing_of(resume=True, **flags)
        assert resumed.record() == record and "as the search started" in resumed.reason
    (packing_of.folder / SEARCH_SETTINGS).write_text(yaml.safe_dump({"trials": 4}))
    older = packing_of(resume=True)
    assert older.trials_at_once == 1 and "before tuner chose" in older.reason  # from before packing: a node each
    assert not packing_of.calls


@pytest.mark.parametrize("flags, recorded, refused", [
    ((), None, None), (("--cpus-per-trial", 1), None, None), (("--gpus-per-trial", 0), None, None),
    (("--cpus-per-trial", 0.5), None, "has packing.cpus_per_trial 1.0, this run 0.5 (--cpus-per-trial)"),
    ((), {"cpus_per_trial": 1.0}, "packing is damaged"),
    ((), {"cpus_per_trial": 4096.0, "gpus_per_trial": 0.0, "threads": 1, "trials_at_once": 1},
     "more than this machine has"),
])
def test_resume_refuses_flags_and_records_it_cannot_pack(tmp_path, conll_dir, capsys, flags, recorded, refused):
    from tuner.spaces import load_space

    results = tmp_path / "results"
    common = ["--profile", "smoke", "--data", conll_dir, "--results-dir", results, "--trials", 2]
    settings = run.settings_from(run.parser().parse_args(["--stage", "teacher", *map(str, common)]), False)
    stage = registry.by_name("teacher")
    space = load_space(stage, settings.space_file("teacher"))
    (results / "teacher" / "search").mkdir(parents=True)
    record = resume.search_settings(stage, settings, space, packing.Packing(1.0, 0.0, 1, 2, "measured"))
    record["packing"] = recorded or record["packing"]
    (results / "teacher" / SEARCH_SETTINGS).write_text(yaml.safe_dump(record, sort_keys=False))
    before = snapshot(results)
    rebuilt = run.settings_from(run.parser().parse_args(
        ["--stage", "teacher", *map(str, common), "--resume", *map(str, flags)]), False)
    if not refused:
        resume.check_resumable(stage, rebuilt, space)
        return
    status, _, err = run_main(run.main, "--stage", "teacher", *common, "--resume", *flags, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert refused in err and "search_settings.yaml" in err
    assert snapshot(results) == before


def test_tuner_counts_the_cpus_this_process_may_use():
    """Pinned to one core (taskset, a cgroup cpuset, a test worker), tuner sees one CPU (what it gives Ray) and a
    trial's default threads are one, whatever the machine has."""
    code = "from tuner.config import default_threads, usable_cpus; print(usable_cpus(), default_threads(0))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=on_one_core)
    assert proc.stdout.split() == ["1", "1"], proc.stderr[-2000:]
