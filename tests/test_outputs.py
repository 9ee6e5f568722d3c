"""What a user takes away from a search: the Optuna study, retraining from the exported YAML, the report and
its plots, predictions, TensorBoard files."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
import yaml

from tests.conftest import STAGES, run_cli, run_main, snapshot, write
from tuner.models import save_model


@pytest.mark.slow
def test_optuna_study_persists_in_sqlite(pipeline_run):
    results, _ = pipeline_run
    storage = f"sqlite:///{results / 'optuna.db'}"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == sorted(STAGES)
    study = optuna.load_study(study_name="teacher", storage=storage)
    assert len(study.trials) == 2
    # the smoke teacher: trial 1 runs its 2 epochs, ASHA stops trial 2 after epoch 1 (test_smoke's pinned numbers)
    states = {t.number: t.state for t in study.trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.PRUNED}
    exported = yaml.safe_load((results / "best_configs.yaml").read_text())["teacher"]
    reports = {}  # trial number -> every epoch's F1, as each trial reported it
    for path in (results / "teacher" / "search").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        reports[int(path.parent.name.split("_")[3]) - 1] = {r["epoch"]: r["val_f1"] for r in lines}
    for trial in study.trials:  # each epoch is an intermediate value at its epoch
        assert trial.intermediate_values == reports[trial.number]
    finished = study.trials[0]
    assert finished.value == max(reports[0].values())  # a finished trial counts with its best epoch
    assert exported["val_f1"] >= finished.value


@pytest.mark.slow
def test_tensorboard_events_per_trial(pipeline_run):
    results, _ = pipeline_run
    trial_dirs = [p for p in (results / "teacher" / "search").iterdir() if p.is_dir()]
    assert len(trial_dirs) == 2
    kept = 0
    for trial in trial_dirs:
        assert list(trial.glob("events.out.tfevents.*")), f"no TensorBoard events in {trial}"
        checkpoints = list(trial.glob("checkpoint_*"))
        assert len(checkpoints) <= 1  # only the best checkpoint of each trial is kept
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        # none only for a trial ASHA stopped at the rung of its one checkpoint-worthy epoch
        assert checkpoints or not any(r["checkpointed"] for r in reports), trial
        kept += len(checkpoints)
    assert kept >= 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_retrain_from_exported_config_reproduces_f1(pipeline_run, stage, tmp_path):
    results, _ = pipeline_run
    output = tmp_path / "retrained"
    proc = run_cli("--stage", stage, "--config", results / "best_configs.yaml", "--results-dir", results,
                   "--output", output, module="tuner.retrain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    searched = json.loads((results / stage / "best" / "result.json").read_text())
    retrained_f1 = float(proc.stdout.split("validation F1 ")[-1].split()[0])
    assert retrained_f1 == pytest.approx(searched["val_f1"], abs=1e-4), proc.stdout
    assert (output / "model.safetensors").is_file()


def test_retrain_refuses_missing_entry(tmp_path, capsys):
    from tuner.retrain import main

    (tmp_path / "best_configs.yaml").write_text("teacher: {seed: 0}\n")
    status, _, err = run_main(main, "--stage", "student", "--config", tmp_path / "best_configs.yaml", capsys=capsys)
    assert status == 2 and "no entry for stage 'student'" in err
    status, _, err = run_main(main, "--stage", "teacher", "--config", tmp_path / "best_configs.yaml", capsys=capsys)
    assert status == 2 and "teacher.hyperparameters is missing" in err


@pytest.mark.parametrize("hyperparameters, message", [
    ("{learning_rat: 1.0e-4, weight_decay: 0.0, warmup_ratio: 0.1}", "teacher.hyperparameters.learning_rat: unknown key"),
    ("{weight_decay: 0.0, warmup_ratio: 0.1}", "teacher.hyperparameters.learning_rate is required"),
    ("{learning_rate: fast, weight_decay: 0.0, warmup_ratio: 0.1}", "learning_rate: expected numbers, got 'fast'"),
    ("{learning_rate: 1.0e-4, weight_decay: 0.0, warmup_ratio: 1.5}", "warmup_ratio: 1.5 outside the allowed range"),
])
def test_retrain_refuses_bad_hyperparameters(hyperparameters, message, tmp_path, capsys):
    """Checked before any training, in one line naming the key (not a traceback from the optimizer)."""
    from tuner.retrain import main

    (tmp_path / "best_configs.yaml").write_text(f"teacher: {{seed: 0, hyperparameters: {hyperparameters}}}\n")
    status, _, err = run_main(main, "--stage", "teacher", "--config", tmp_path / "best_configs.yaml",
                              "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_configs.yaml"]


def test_retrain_refuses_a_member_without_its_scores(tmp_path, capsys):
    from tuner.retrain import main

    member = {"name": "m1", "config": {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.1,
                                       "temperature": 2.0, "alpha": 0.5, "num_layers": 1, "factor_dim": 8},
              "epoch": 2}
    write(tmp_path / "best_configs.yaml", yaml.safe_dump({"student": {"hyperparameters": {}, "pareto": [member]}}))
    status, _, err = run_main(main, "--stage", "student", "--member", "m1", "--config", tmp_path / "best_configs.yaml",
                              "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "student.pareto[m1].val_f1: expected a number, got None" in err, err


@pytest.mark.parametrize("shape, message", [
    ({"num_layers": 3, "factor_dim": 8}, "student.hyperparameters.num_layers: 3 is outside [1, 2]"),
    ({"num_layers": 2, "factor_dim": 24}, "student.hyperparameters: a student of 754905 parameters, over "
                                          "training.max_params (300000)"),
    ({"factor_dim": 16}, "student.hyperparameters: a student of 510473 parameters"),  # 2 layers: the default
    ({"max_params": 200000}, "student.training.max_params: 200000 fits no student of this teacher"),
])
def test_retrain_refuses_a_shape_the_teacher_cannot_give(shape, message, tmp_path, conll_dir, tokenizer, capsys,
                                                         monkeypatch):
    """Checked in one line before any work: no data read, no teacher logits (not a ValueError from cutting the
    student)."""
    import tuner.task
    from tuner.config import PROFILE_DEFAULTS
    from tuner.data import CONLL_LABELS
    from tuner.models import initial_token_classifier, save_model
    from tuner.pipeline import training_record  # imported before the patch: its own names stay the real ones
    from tuner.retrain import main

    def no_work(*args, **kwargs):
        raise AssertionError("the data or the teacher's logits were computed before the refusal")

    monkeypatch.setattr(tuner.task, "load_task", no_work)  # retrain reads them from tuner.task when it runs
    monkeypatch.setattr(tuner.task, "stage_inputs", no_work)

    teacher = tmp_path / "teacher" / "best"
    save_model(initial_token_classifier("tiny", list(CONLL_LABELS), seed=0, vocab_size=len(tokenizer)), teacher,
               tokenizer)
    write(teacher / "result.json", json.dumps({"seed": 0, "split": "report", "data": str(conll_dir)}))
    # a budget of 300,000: a 2-layer student at E 24 has about 750,000; the smallest, 1 layer at E 8, about 257,000
    profile = dataclasses.replace(PROFILE_DEFAULTS["smoke"], **{k: v for k, v in shape.items() if k == "max_params"})
    config = {"learning_rate": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.1, "temperature": 2.0, "alpha": 0.5,
              **{k: v for k, v in shape.items() if k != "max_params"}}
    entry = {"seed": 0, "data": str(conll_dir), "split": "report", "training": training_record(profile, 1),
             "hyperparameters": config}
    write(tmp_path / "best_configs.yaml", yaml.safe_dump({"student": entry}))
    before = snapshot(tmp_path)
    status, _, err = run_main(main, "--stage", "student", "--config", tmp_path / "best_configs.yaml",
                              "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(tmp_path) == before


def test_predict_refuses_standard_input_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    import io
    import sys

    from tuner.predict import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"M\xfcller visits Paris\n")))
    status, _, err = run_main(main, "--model", tmp_path / "anything", capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "standard input: not UTF-8 text (invalid start byte at byte 1)" in err, err


def test_export_refuses_a_damaged_record_before_writing(tmp_path, capsys):
    from tuner.export import main

    write(tmp_path / "teacher" / "best" / "result.json", '{"stage": "teacher", "hyperparameters": {}}')
    before = snapshot(tmp_path)
    status, _, err = run_main(main, "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and "teacher/best/result.json: parameters: expected a number, got None" in err, err
    assert snapshot(tmp_path) == before


RECORD = {"stage": "teacher", "hyperparameters": {}, "parameters": 10, "val_f1": 0.5, "test_f1": 0.5,
          "search_wall_seconds": 1.0}


@pytest.mark.parametrize("deployed, message", [
    ("{}", "deploy.json: threads is missing"),
    ('{"threads": 2, "cpu": "x", "formats": {"onnx_float32": {"validation": 0.5, "test": 0.5, "bytes": 1}}}',
     "deploy.json: formats.onnx_float32.latency: expected a mapping, got None"),
    ("\xff", "deploy.json: not UTF-8 text"),
])
def test_export_refuses_a_damaged_deploy_record_before_writing(deployed, message, tmp_path, capsys):
    """Every file the exports read is checked before best_configs.yaml or summary.md is written."""
    from tuner.export import main

    write(tmp_path / "teacher" / "best" / "result.json", json.dumps(RECORD))
    write(tmp_path / "teacher" / "deploy" / "deploy.json", deployed, encoding="latin-1")
    before = snapshot(tmp_path)
    status, _, err = run_main(main, "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_run_replaces_the_damaged_records_of_the_stages_it_searches_again(tmp_path, conll_dir):
    """``--stage all --overwrite`` over a results folder whose student record and deployed model are damaged: the
    stages before the student export without reading them, and the student's search replaces them."""
    results = tmp_path / "results"
    write(results / "student" / "best" / "result.json", "[]")
    write(results / "student" / "deploy" / "deploy.json", "{}")
    write(results / "student" / "search" / "kept", "an earlier search")
    proc = run_cli("--stage", "all", "--trials", 1, "--profile", "smoke", "--data", conll_dir, "--results-dir",
                   results, "--overwrite", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((results / "student" / "best" / "result.json").read_text())["stage"] == "student"
    assert not (results / "student" / "deploy").exists()
    assert set(yaml.safe_load((results / "best_configs.yaml").read_text())) == set(STAGES)


def test_deploy_refuses_a_damaged_record_of_another_stage_before_deploying(tmp_path, tiny_model, tokenizer, capsys):
    from tuner.deploy import main

    results = tmp_path / "results"
    save_model(tiny_model, results / "student" / "best", tokenizer)
    write(results / "student" / "best" / "result.json", json.dumps(dict(RECORD, stage="student")))
    write(results / "teacher" / "best" / "result.json", json.dumps(RECORD))
    write(results / "teacher" / "deploy" / "deploy.json", "{}")
    before = snapshot(results)
    status, _, err = run_main(main, "--results-dir", results, "--stage", "student", capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "teacher/deploy/deploy.json: threads is missing" in err, err
    assert snapshot(results) == before


def test_report_refuses_a_damaged_study_before_plotting_and_creates_none(tmp_path, capsys):
    from tuner.report import main

    write(tmp_path / "teacher" / "best" / "result.json", json.dumps(RECORD))
    write(tmp_path / "optuna.db", "not a database, only text standing in for one")
    before = snapshot(tmp_path)
    status, _, err = run_main(main, "--results-dir", tmp_path, capsys=capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "optuna.db: not a readable Optuna database (file is not a database; move it away" in err, err
    assert snapshot(tmp_path) == before  # no plots/ folder, no plot
    (tmp_path / "optuna.db").unlink()  # without a study: the report says so, and creates no empty database
    status, _, err = run_main(main, "--results-dir", tmp_path, capsys=capsys)
    assert status == 0, err
    assert "0 trials in the Optuna study" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_report_writes_markdown_and_plots(pipeline_run):
    results, _ = pipeline_run
    proc = run_cli("--results-dir", results, module="tuner.report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (results / "report.md").read_text()
    for stage in STAGES:
        for kind in ("history", "parallel", "importances"):
            png = results / "plots" / f"{stage}_{kind}.png"
            if kind == "importances" and not png.exists():  # undefined when the trials tie
                section = report.split(f"## {stage}")[1].split("## ")[0]
                assert "every trial scored the same" in section
                continue
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
            assert f"plots/{stage}_{kind}.png" in report
    assert (results / "plots" / "teacher_importances.png").is_file()  # the smoke teacher's trials differ
    assert (results / "plots" / "tradeoff.png").is_file()
    assert report.count("\n| ") >= 4  # header, rule and three stage rows


def word_tags(model_folder, line: str) -> list[str]:
    """The model's tag per word, by the first sub-token's argmax, computed here without tuner.predict."""
    import torch

    from tuner.models import load_model, load_tokenizer, model_labels
    from tuner.training import autocast

    model, tokenizer = load_model(model_folder), load_tokenizer(str(model_folder))
    encoded = tokenizer(line.split(), is_split_into_words=True, return_tensors="pt")
    with torch.no_grad(), autocast("cpu"):  # the precision tuner.predict runs at
        best = model(**encoded).logits[0].argmax(-1).tolist()
    firsts = {}
    for position, word in enumerate(encoded.word_ids()):
        if word is not None:
            firsts.setdefault(word, position)
    return [model_labels(model)[best[firsts[w]]] for w in range(len(line.split()))]


@pytest.mark.slow
def test_predict_prints_entities_with_spans(pipeline_run, tmp_path):
    from tuner.predict import entities_of, tag_lines, word_offsets

    results, _ = pipeline_run
    line = "EU rejects German call to boycott British lamb ."
    words = word_offsets(line)
    assert words[1] == ("rejects", 3, 10)
    by_hand = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "I-MISC", "O"]
    assert entities_of(by_hand, words) == [
        {"type": "ORG", "text": "EU", "words": (0, 1), "chars": (0, 2)},
        {"type": "MISC", "text": "German", "words": (2, 3), "chars": (11, 17)},
        {"type": "MISC", "text": "British lamb", "words": (6, 8), "chars": (34, 46)}]
    found = 0
    for stage in STAGES:  # the smoke models barely learn: check the tags against the model's own word tags
        (entities,) = tag_lines(results / stage / "best", [line])
        assert entities == entities_of(word_tags(results / stage / "best", line), words)
        found += len(entities)
        for entity in entities:
            start, end = entity["chars"]
            assert line[start:end] == entity["text"]
    assert found  # some model tagged an entity (the smoke teacher: six), so the comparison above compared something
    sentences = tmp_path / "in.txt"
    sentences.write_text(line + "\nPeter Blackburn\n")
    proc = run_cli("--model", results / "student" / "best", "--file", sentences, module="tuner.predict")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == line and "Peter Blackburn" in proc.stdout
    proc = run_cli("--model", results / "nothing", line, module="tuner.predict")
    assert proc.returncode == 2 and "not a saved model" in proc.stderr


def test_summary_lists_a_front_search_members_smallest_first():
    from tuner.export import summary_table

    member = {"threads": 2, "cpu": "AMD EPYC", "val_f1": 0.8, "test_f1": 0.79, "batch_1_median_ms": 2.5}
    record = {"parameters": 8_000_000, "val_f1": 0.82, "test_f1": 0.81, "search_wall_seconds": 600,
              "description": "a student", "pareto": [dict(member, name="8.00M-L3-E96-b", parameters=8_000_000),
                                                     dict(member, name="2.47M-L1-E16-a", parameters=2_470_569)]}
    text = summary_table({"teacher": dict(record, pareto=None), "student": record})
    assert text.count("the F1-vs-size front") == 1
    front = text.split("## student: the F1-vs-size front (2 members; student/pareto.csv")[1]
    assert "on 2 threads, AMD EPYC" in front
    rows = [line for line in front.splitlines() if line.startswith("| ") and "M-L" in line]
    assert rows == ["| 2.47M-L1-E16-a | 2.47M | 0.8000 | 0.7900 | 2.50 |", "| 8.00M-L3-E96-b | 8.00M | 0.8000 | 0.7900 | 2.50 |"]
