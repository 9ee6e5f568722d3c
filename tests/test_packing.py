"""Trials at once (tuner.packing): the choice from a measured step, the flags that override it, and what --resume
keeps of it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from tests.conftest import run_main, snapshot
from tuner import packing, pipeline, registry, run
from tuner.config import RunSettings, resolve_profile, train_settings
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


def test_amdahl_prediction_meets_both_measurements():
    assert packing.predicted_steps_per_second(1.0, 0.625, 4, 4) == pytest.approx(1 / 0.625)
    assert packing.predicted_steps_per_second(1.0, 0.625, 4, 1) == pytest.approx(4.0)  # four trials of 1 s
    # half of the step is serial ((0.625 - 1/4) / (1 - 1/4)): at 2 threads a step takes 0.5 + 0.5/2 s
    assert packing.predicted_steps_per_second(1.0, 0.625, 4, 2) == pytest.approx(2 / 0.75)
    assert packing.predicted_steps_per_second(1.0, 0.25, 4, 1) == pytest.approx(4.0)  # perfect scaling: a tie


@pytest.mark.parametrize("one, every, cores, threads, at_once", [
    (0.095, 0.082, 2, 1, 2),    # the cpu profile's student, measured: a step barely gains from a second core
    (1.0, 0.52, 2, 2, 1),       # a step that scales: one trial on both cores
    (1.0, 0.58, 2, 1, 2),       # 1.16x from packing: just over PACKING_GAIN
    (1.0, 0.57, 2, 2, 1),       # 1.14x: not worth sharing the node
    (1.0, 0.625, 4, 1, 4),      # 2.5x
    (1.0, 0.3, 4, 1, 4),        # 1.2x
    (1.0, 0.27, 4, 4, 1),       # 1.08x
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
    assert alone.trials_at_once == 1 and "would not fit in memory" in alone.reason
    assert packing.choose_cpu(**step, trial_bytes=GiB, available_bytes=None, trials=3).trials_at_once == 2


@pytest.mark.parametrize("peak, per_gpu", [(10 * GiB, 4), (20 * GiB, 3), (30 * GiB, 2), (70 * GiB, 1)])
def test_gpu_share_follows_the_trial_memory(peak, per_gpu):
    chosen = packing.choose_gpu(peak, 80 * GiB, gpus_per_node=2.0, cpus_per_node=16, step=0.05, trials=40)
    assert chosen.gpus_per_trial == pytest.approx(1 / per_gpu)
    assert chosen.trials_at_once == 2 * per_gpu
    assert chosen.cpus_per_trial == max(1, int(16 * (1 / per_gpu) / 2))  # the node's CPUs shared the same way


def test_trials_shorter_than_a_worker_start_stay_one_at_a_time():
    # the smoke profile's teacher: 0.02 s steps at 1 and 2 threads, 8 steps a trial; 2 of them are 0.3 s of training
    quick = packing.choose_cpu(0.02, 0.02, 2, trial_bytes=GiB, available_bytes=64 * GiB, trials=2, trial_steps=8)
    assert quick.trials_at_once == 1 and "would not finish" in quick.reason
    # the same step over a cpu-profile student's 1,880 steps: a second worker's 10 s start is soon paid back
    assert packing.choose_cpu(0.02, 0.02, 2, trial_bytes=GiB, available_bytes=64 * GiB, trials=2,
                              trial_steps=1880).trials_at_once == 2


def test_given_flags_win_and_say_so():
    chosen = packing.given(1, 0.0, cpus_per_node=2, gpus_per_node=0)
    assert (chosen.trials_at_once, chosen.threads) == (2, 1) and "given" in chosen.reason
    assert packing.given(0, 0.25, cpus_per_node=16, gpus_per_node=1).trials_at_once == 4
    whole = packing.given(0, 0.0, cpus_per_node=2, gpus_per_node=0)
    assert (whole.trials_at_once, whole.threads) == (1, 2)
    assert packing.recorded(chosen.record()).record() == chosen.record()  # search_settings.yaml's entry comes back


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


def test_measurement_times_the_stage_and_leaves_the_driver_as_it_was(smoke_teacher):
    stage, settings, task, inputs = smoke_teacher
    trial = train_settings(settings.profile, 3, 0, 1)
    threads = torch.get_num_threads()
    chosen = packing.measure(stage, {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.0}, task, inputs,
                             trial, cpus_per_node=2, gpus_per_node=0, trials=4)
    assert torch.get_num_threads() == threads
    assert set(chosen.step_seconds) == {1, 2} and all(0 < s < 5 for s in chosen.step_seconds.values())
    assert chosen.trials_at_once * chosen.threads == 2 and "measured in" in chosen.reason
    again = packing.choose_cpu(chosen.step_seconds[1], chosen.step_seconds[2], 2, 1, None, 4,
                               3 * -(-len(task.train) // settings.profile.batch_size))
    assert again.record() == chosen.record()


def test_inputs_bytes_count_every_tensor_once():
    shared = torch.zeros(10, dtype=torch.float32)
    inputs = {"a": [shared, shared], "b": (torch.zeros(3, dtype=torch.int64), "text", 5)}
    assert packing.tensor_bytes(inputs) == 40 + 24


def cluster(cpus=2, gpus=0.0):
    return ClusterInfo(dashboard_url="", cpus_per_node=cpus, gpus_per_node=gpus, token_file=None)


def test_stage_packing_order_flags_then_resume_then_one_trial(smoke_teacher, tmp_path, monkeypatch):
    stage, settings, task, inputs = smoke_teacher
    settings = dataclasses.replace(settings, results_dir=tmp_path)
    measured = []
    monkeypatch.setattr(packing, "measure", lambda *a, **k: measured.append(a) or packing.given(1, 0, 2, 0))
    from tuner.spaces import load_space

    args = (stage, load_space(stage, settings.space_file(stage.name)), inputs, None, task, None)
    flagged = pipeline.stage_packing(stage, dataclasses.replace(settings, cpus_per_trial=2), *args[1:],
                                     cluster(gpus=1.0), resume=False)
    assert (flagged.cpus_per_trial, flagged.gpus_per_trial) == (2, 1.0)  # --cpus-per-trial alone: 1 GPU with CUDA
    assert pipeline.stage_packing(stage, dataclasses.replace(settings, trials=1), *args[1:], cluster(),
                                  resume=False).trials_at_once == 1
    assert not measured
    record = packing.Packing(1.0, 0.0, 1, 2, "measured").record()
    (tmp_path / stage.name).mkdir()
    (tmp_path / stage.name / pipeline.SEARCH_SETTINGS).write_text(yaml.safe_dump({"packing": record}))
    resumed = pipeline.stage_packing(stage, settings, *args[1:], cluster(), resume=True)
    assert resumed.record() == record and "as the search started" in resumed.reason and not measured
    (tmp_path / stage.name / pipeline.SEARCH_SETTINGS).write_text(yaml.safe_dump({"trials": 4}))
    older = pipeline.stage_packing(stage, settings, *args[1:], cluster(), resume=True)
    assert older.trials_at_once == 1 and not measured  # searches from before packing: one trial per node
    assert pipeline.stage_packing(stage, settings, *args[1:], cluster(), resume=False).trials_at_once == 2
    assert len(measured) == 1


@pytest.mark.parametrize("flags, refused", [((), False), (("--cpus-per-trial", 1), False),
                                            (("--gpus-per-trial", 0), False), (("--cpus-per-trial", 2), True)])
def test_resume_keeps_the_packing_the_search_started_with(tmp_path, conll_dir, capsys, flags, refused):
    from tuner.spaces import load_space

    results = tmp_path / "results"
    common = ["--profile", "smoke", "--data", conll_dir, "--results-dir", results, "--trials", 2]
    settings = run.settings_from(run.parser().parse_args(["--stage", "teacher", *map(str, common)]), False)
    stage = registry.by_name("teacher")
    space = load_space(stage, settings.space_file("teacher"))
    (results / "teacher" / "search").mkdir(parents=True)
    record = pipeline.search_settings(stage, settings, space, packing.Packing(1.0, 0.0, 1, 2, "measured"))
    (results / "teacher" / pipeline.SEARCH_SETTINGS).write_text(yaml.safe_dump(record, sort_keys=False))
    before = snapshot(results)
    rebuilt = run.settings_from(run.parser().parse_args(
        ["--stage", "teacher", *map(str, common), "--resume", *map(str, flags)]), False)
    if not refused:
        pipeline.check_resumable(stage, rebuilt, space)
        return
    status, _, err = run_main(run.main, "--stage", "teacher", *common, "--resume", *flags, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"has packing.{flags[0][2:].replace('-', '_')} " in err and flags[0] in err
    assert snapshot(results) == before
